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
    if args.list_tasks or args.tasks:
        return cmd_eval_tasks(args)
    from ..eval.metrics import format_table
    from ..eval.run import evaluate_checkpoint

    ckpts = args.compare or ([args.checkpoint] if args.checkpoint else [])
    if not ckpts:
        raise SlmError("slm eval: pass --checkpoint CKPT or --compare CKPT1 CKPT2 ...")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--max-batches", args.max_batches, 0),
                               ("--seq-len", args.seq_len, 0)):
        if value < least:
            raise SlmError(f"slm eval {flag}={value}: must be >= {least}")
    rows = []
    for c in ckpts:
        rows.append((c, evaluate_checkpoint(c, data=args.data, split=args.split, seq_len=args.seq_len,
                                            batch_size=args.batch_size, max_batches=args.max_batches,
                                            device=args.device)))
    print(format_table(rows))
    if args.json:
        print(json.dumps({name: m for name, m in rows}, indent=2))
    return 0


def cmd_eval_tasks(args: argparse.Namespace) -> int:
    """`slm eval --tasks ...` through lm-evaluation-harness (slm.eval.harness); `--list-tasks` lists the offline ones."""
    from ..eval.offline_tasks import list_tasks

    if args.list_tasks:
        names = list_tasks()
        print("\n".join(names) if names else "no offline tasks: BIG-bench could not be fetched (see README: Evaluation)")
        return 0
    from ..eval.harness import format_results, results_path, run_tasks

    if not args.checkpoint:
        raise SlmError("slm eval --tasks: pass --checkpoint CKPT")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise SlmError("slm eval --tasks: give task names, e.g. --tasks slm_bb_hhh_alignment (see --list-tasks)")
    for flag, value, least in (("--limit", args.limit, 1), ("--num-fewshot", args.num_fewshot, 0),
                               ("--batch-size", args.batch_size, 1)):
        if value is not None and value < least:
            raise SlmError(f"slm eval {flag}={value}: must be >= {least}")
    results = run_tasks(args.checkpoint, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                        batch_size=args.batch_size, device=args.device, include_path=args.include_path or None)
    print(format_results(results))
    print(f"saved: {results_path(args.checkpoint, results)}")
    if args.json:
        print(json.dumps(results["results"], indent=2, default=str))
    return 0


def add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="Loss, perplexity, bits/byte, accuracy of checkpoints",
                        description="Evaluate one checkpoint, or compare several in one table")
    ev.add_argument("--checkpoint", default="", help="checkpoint dir (or a run dir: its latest checkpoint)")
    ev.add_argument("--compare", nargs="+", default=None, metavar="CKPT", help="evaluate several checkpoints")
    ev.add_argument("--data", default="", help="a prepared dataset dir or a text file (default: the run's data)")
    ev.add_argument("--split", default="val", choices=["val", "train"], help="split of a prepared dataset")
    ev.add_argument("--seq-len", type=int, default=0, help="context length (default: the checkpoint's training one)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-batches", type=int, default=0, help="0 = all")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="also print JSON")
    ev.add_argument("--tasks", default="", help="lm-evaluation-harness tasks, comma-separated (slm's offline "
                    "BIG-bench tasks: --list-tasks; standard ones when their data is available)")
    ev.add_argument("--list-tasks", action="store_true", help="list slm's offline lm-eval tasks")
    ev.add_argument("--limit", type=int, default=None, help="with --tasks: at most N examples per task")
    ev.add_argument("--num-fewshot", type=int, default=None, help="with --tasks: few-shot examples (seeded)")
    ev.add_argument("--include-path", default="", help="with --tasks: a folder of extra lm-eval task YAMLs")
    ev.set_defaults(fn=cmd_eval)
