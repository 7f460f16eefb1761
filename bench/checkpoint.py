"""What trusting a checkpoint costs: save (fsync included) and load with and without the sha256 check, `smollm2-135m`.

Usage: python bench/checkpoint.py [--preset smollm2-135m] [--rounds 3] [--quick]

Saves a training checkpoint (weights + AdamW state, as the trainer writes it) of the preset with random weights, then
times, alternating rounds, medians:
- load_hashed: `load_state_dict` + `load_training_state` with every file's sha256 checked (the default; the verify
  cache is cleared each round, so every round hashes everything),
- load_sizes: the same reads with only the size check (what slm did before hashes were verified),
and reports the hashing throughput. Last line: save_s load_hashed_s load_sizes_s hash_overhead_s gb_per_s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import harness  # noqa: F401  (puts src/ on sys.path)
from slm import checkpoint as ckpt
from slm.config import RunConfig, TrainConfig
from slm.models import build_model, preset_config
from slm.train.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the test preset, one round (smoke run)")
    args = ap.parse_args()
    preset, rounds = ("test", 1) if args.quick else (args.preset, args.rounds)
    torch.manual_seed(0)
    model = build_model(preset_config(preset))
    tc = TrainConfig(steps=1)
    opt = build_optimizer(model, tc)
    for p in model.parameters():  # one step so AdamW holds its two moments per parameter
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    with tempfile.TemporaryDirectory(prefix="slm-bench-ckpt-") as d:
        path = Path(d) / "step_000001"
        t = time.perf_counter()
        ckpt.save_checkpoint(path, model=model, config=RunConfig(model=model.cfg, train=tc),
                             optimizer_state=opt.state_dict(), trainer_state={"step": 1})
        save_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        hashed, sizes = [], []
        for r in range(rounds):
            ckpt._VERIFIED.clear()
            t = time.perf_counter()
            ckpt.load_state_dict(path)
            ckpt.load_training_state(path)
            hashed.append(time.perf_counter() - t)
            real = ckpt.verify_checkpoint
            ckpt.verify_checkpoint = lambda p, full_hash=True: real(p, full_hash=False)
            try:
                t = time.perf_counter()
                ckpt.load_state_dict(path)
                ckpt.load_training_state(path)
                sizes.append(time.perf_counter() - t)
            finally:
                ckpt.verify_checkpoint = real
            print(f"round {r}: hashed {hashed[-1]:.3f} s, sizes only {sizes[-1]:.3f} s", flush=True)
    h, s = statistics.median(hashed), statistics.median(sizes)
    print(f"{preset}: checkpoint {size / 1e9:.3f} GB (weights + AdamW state)")
    harness.emit(save=False, save_s=save_s, load_hashed_s=h, load_sizes_s=s, hash_overhead_s=h - s,
                 gb_per_s=size / 1e9 / max(h - s, 1e-9))


if __name__ == "__main__":
    main()
