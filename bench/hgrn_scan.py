"""HGRN-Bit's associative scan (slm.models.layers.scan) vs a per-timestep Python loop, forward + backward at T = 1024:
the recurrence alone, one HGRN token mixer (its four BitLinear projections, norm and gates around the recurrence) and
a whole training step of an HGRN-Bit model; and greedy decode tok/s of that model vs a Llama of about the same size.
The evidence behind "never a loop over time in training" (target: >= 10x at T = 1024). The further out, the more of
the time is BitLinear GEMMs and quantizers that both variants share, so the ratio shrinks (Amdahl).

Usage: python bench/hgrn_scan.py [--quick] [--rounds 3] [--seq 1024] [--batch 4] [--preset hgrn-bit-tiny]
Last line: scan_ms=… loop_ms=… scan_speedup=… mixer_speedup=… step_scan_ms=… step_loop_ms=… step_speedup=… decode_tok_s=…
llama_decode_tok_s=…; written to runs/bench/hgrn_scan.json.
"""

from __future__ import annotations

import argparse
import time

import torch

from harness import add_timing_args, alternate, apply_timing_args, clock, emit, machine_line

import slm.models.hgrn_bit.model as hgrn_model
from slm.config import SamplingConfig
from slm.generate import generate
from slm.models import build_model, preset_config
from slm.models.layers.scan import linear_scan, linear_scan_naive
from slm.models.llama import LlamaConfig


def _loop_scan(f, x, h0=None, **_):
    return linear_scan_naive(f.float(), x.float(), None if h0 is None else h0.float())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: T 64, 1 round, not saved")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=int, default=512, help="channels of the recurrence-only timing")
    ap.add_argument("--preset", default="hgrn-bit-tiny", help="model of the training-step and decode timings")
    ap.add_argument("--decode-tokens", type=int, default=128)
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.seq, args.rounds, args.width, args.decode_tokens = 64, 1, 64, 8
    torch.manual_seed(0)
    B, T, D = args.batch, args.seq, args.width
    print(f"# hgrn_scan: {machine_line()}; B {B}, T {T}, D {D}, model {args.preset}", flush=True)

    f = torch.rand(B, T, D).requires_grad_()
    x = torch.randn(B, T, D).requires_grad_()
    diff = (linear_scan(f, x) - linear_scan_naive(f, x)).abs().max().item()
    print(f"  max |scan - loop| = {diff:.3g}")

    def recurrence(fn):
        def run() -> float:
            t0 = clock()
            fn(f, x).sum().backward()
            return (clock() - t0) * 1000
        return run

    rec = alternate({"scan_ms": recurrence(linear_scan), "loop_ms": recurrence(_loop_scan)}, args.rounds,
                    label="recurrence ")

    mixer = hgrn_model.HGRNMixer(D, 1e-6).train()
    xm = torch.randn(B, T, D).requires_grad_()

    def with_scan(scan, work):  # ms of work() with the model code's scan swapped for `scan`
        def run() -> float:
            hgrn_model.linear_scan = scan
            try:
                t0 = clock()
                work()
                return (clock() - t0) * 1000
            finally:
                hgrn_model.linear_scan = linear_scan
        return run

    def mixer_step():
        mixer(xm, None, None, None).sum().backward()

    mix = alternate({"mixer_scan_ms": with_scan(linear_scan, mixer_step),
                     "mixer_loop_ms": with_scan(_loop_scan, mixer_step)}, args.rounds, label="mixer ")

    cfg = preset_config(args.preset, vocab_size=320, max_seq_len=max(T, 128))
    model = build_model(cfg).train()
    ids = torch.randint(0, 256, (B, T + 1))

    def train_step():
        model(ids[:, :-1], targets=ids[:, 1:]).backward()

    stp = alternate({"step_scan_ms": with_scan(linear_scan, train_step),
                     "step_loop_ms": with_scan(_loop_scan, train_step)}, args.rounds, label="train step ")

    # decode: batch 1, greedy, eager, against a Llama of about the same parameter count and the same vocab
    d = cfg.d_model
    llama_cfg = LlamaConfig(vocab_size=320, d_model=d, n_layers=cfg.n_layers, n_heads=max(1, d // 64),
                            n_kv_heads=max(1, d // 128), ffn_hidden=4 * d, max_seq_len=1024, tie_embeddings=False)
    llama = build_model(llama_cfg).eval()
    model.eval()
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.decode_tokens, stop_at_eos=False)
    prompt = [list(range(65, 97))]

    def decode(m):
        def run() -> float:
            generate(m, prompt, sampling, eos_id=None)  # warm the state pool
            t0 = time.perf_counter()
            out = generate(m, prompt, sampling, eos_id=None)
            return len(out[0]) / (time.perf_counter() - t0)
        return run

    dec = alternate({"decode_tok_s": decode(model), "llama_decode_tok_s": decode(llama)}, args.rounds,
                    label="decode ")
    print(f"  params: {args.preset} {cfg.num_parameters():,}, llama {llama_cfg.num_parameters():,}")
    emit(save=not args.quick, scan_ms=rec["scan_ms"], loop_ms=rec["loop_ms"],
         scan_speedup=rec["loop_ms"] / rec["scan_ms"], mixer_scan_ms=mix["mixer_scan_ms"],
         mixer_loop_ms=mix["mixer_loop_ms"], mixer_speedup=mix["mixer_loop_ms"] / mix["mixer_scan_ms"],
         step_scan_ms=stp["step_scan_ms"],
         step_loop_ms=stp["step_loop_ms"], step_speedup=stp["step_loop_ms"] / stp["step_scan_ms"],
         decode_tok_s=dec["decode_tok_s"], llama_decode_tok_s=dec["llama_decode_tok_s"],
         extra={"max_abs_diff": diff, "params": cfg.num_parameters(), "llama_params": llama_cfg.num_parameters()})


if __name__ == "__main__":
    main()
