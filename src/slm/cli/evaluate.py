"""`slm eval`: loss, perplexity, bits/byte and accuracy of one checkpoint, or of several side by side in one table.

The numbers come from `slm.eval.run.evaluate_checkpoint`; this module only maps flags to its arguments and prints.
Defaults that depend on the checkpoint (its data, its training context length) are resolved there, not here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import SlmError


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.metrics import format_table
    from ..eval.run import evaluate_checkpoint

    ckpts = args.compare or ([args.checkpoint] if args.checkpoint else [])
    if not ckpts:
        raise SlmError("slm eval: pass --checkpoint CKPT or --compare CKPT1 CKPT2 ...")
    rows = []
    for c in ckpts:
        rows.append((c, evaluate_checkpoint(c, data=args.data, split=args.split, seq_len=args.seq_len,
                                            batch_size=args.batch_size, max_batches=args.max_batches,
                                            device=args.device)))
    print(format_table(rows))
    if args.json:
        print(json.dumps({name: m for name, m in rows}, indent=2))
    return 0


def add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="Loss, perplexity, bits/byte, accuracy of checkpoints",
                        description="Evaluate one checkpoint, or compare several in one table")
    ev.add_argument("--checkpoint", default="", help="checkpoint dir (or a run dir: its latest checkpoint)")
    ev.add_argument("--compare", nargs="+", default=None, metavar="CKPT", help="evaluate several checkpoints")
    ev.add_argument("--data", default="", help="a prepared dataset dir or a text file (default: the run's data)")
    ev.add_argument("--split", default="val", help="split of a prepared dataset (val | train)")
    ev.add_argument("--seq-len", type=int, default=0, help="context length (default: the checkpoint's training one)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-batches", type=int, default=0, help="0 = all")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="also print JSON")
    ev.set_defaults(fn=cmd_eval)
