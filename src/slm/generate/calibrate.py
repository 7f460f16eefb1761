"""Decode weights dtype and compiled step for `slm generate` / `slm serve` ("auto"): chosen by timing, per machine.

Whether bf16 weights decode faster than fp32 depends on the CPU's bf16 units and on whether the step is compiled
(inductor freezes and prepacks the weights; eager bf16 matrix-vector products were no faster than fp32 on an AMX CPU,
see slm.generate.engine), so `auto` times decode steps of each candidate on the model itself: a batch of prompts
prefilled, then a few decode steps through `DecodeEngine.step_fn`, median step time after a warm-up step.

- dtype "auto": fp32 and bf16 weights, eager (about a second on a small model). On CUDA: bf16 where supported (no
  measuring; the tensor cores decide).
- compile "auto": the chosen dtype compiled too, in both of the engine's modes (`True`: frozen oneDNN weights; and
  "autotune": inductor's C++ GEMM templates, autotuned per shape), and a compiled step wins when its compile time is
  paid back by `expected_tokens` decode steps. Which mode is faster depends on the CPU: on an AMX CPU the templates
  doubled the reference model's decode; on this Zen 4 (AVX512-BF16, no AMX) they were slower than plain oneDNN at
  1 and 2 threads and took twice the compile time. Compiling costs tens of seconds to a few minutes, so it is only
  measured when the caller expects enough tokens for it to matter (a server: yes; a one-off `slm generate`: only when
  the cache already holds the measurement or the request is long). compile "true" takes the faster measured mode
  when both are cached, else `True`.
- Cached per machine + model shape + batch + torch version in `<SLM_CACHE>/decode_calibration.json`; the choice is
  printed with its timings. Timings taken while the machine was busy (the 1-minute load average at or above the
  cores torch uses, i.e. another process competed for them) can be several times too slow and would decide every
  later run, so such an entry is measured again by the first call that finds the machine quieter.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import SlmError
from ..models import CausalLM
from ..runtime import cpu_features, read_machine_cache, write_machine_cache

CACHE_FILE = "decode_calibration.json"
MEASURE_COMPILE_MIN_TOKENS = 20_000  # below this many expected tokens, compiling is not worth measuring
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


COMPILE_MODES = {"compile": True, "autotune": "autotune"}  # candidate suffix -> DecodeEngine's `compile`


@dataclass
class DecodeChoice:
    dtype: str  # fp32 | bf16
    compile: bool | str  # DecodeEngine's `compile`: False, True or "autotune"
    summary: str  # what was measured (or why nothing was)


def time_decode(model: CausalLM, compile: bool | str, batch: int, prompt_len: int = 16, steps: int = 8
                ) -> tuple[float, float]:
    """(median seconds per decode step, set-up seconds beyond one step: compilation) of `model` at `batch` rows."""
    from .engine import DecodeEngine

    engine = DecodeEngine(model, compile=compile)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=gen).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            state = engine.acquire_state(batch, min(model.cfg.max_seq_len, prompt_len + steps + 2 + 64))
            logits = model(ids, state=state, attention_mask=mask)[:, -1]
            step = engine.step_fn()
            one = torch.ones(batch, 1, dtype=torch.bool, device=device)
            laps = []
            for _ in range(steps + 1):
                token = logits.argmax(-1, keepdim=True)
                t = time.perf_counter()
                logits = step(token, state, one)[:, -1]
                float(logits[0, 0])  # wait for the device
                laps.append(time.perf_counter() - t)
    finally:
        model.train(was_training)
    step_s = statistics.median(laps[1:])
    return step_s, max(0.0, laps[0] - step_s)


def _key(model: CausalLM, batch: int) -> str:
    from .engine import inductor_options

    device = next(model.parameters()).device
    fields = {"machine": cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              # what a compiled candidate means: a change of the engine's settings invalidates its timings
              "modes": {m: inductor_options(device, c) for m, c in COMPILE_MODES.items()},
              "model": {k: v for k, v in sorted(vars(model.cfg).items()) if isinstance(v, (int, float, str, bool))},
              "batch": batch, "device": device.type}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available: treat the machine as quiet
        return 0.0


def _busy(load: float) -> bool:
    """Whether a 1-minute load average means other processes competed for the cores torch computes on."""
    return load >= torch.get_num_threads()


def _cached_entry(key: str, load: float) -> dict:
    """The cache entry of `key`, or {} when there is none or it was measured on a busy machine that is quieter now
    (`load`: the current 1-minute load average)."""
    entry = read_machine_cache(CACHE_FILE).get(key, {})
    if entry and _busy(float(entry.get("load", 0.0))) and not _busy(load):
        return {}
    return entry


def choose_decode(model: CausalLM, *, dtype: str = "auto", compile: str = "auto", batch: int = 1,
                  expected_tokens: int = 0, log: Callable[[str], None] | None = None) -> tuple[CausalLM, DecodeChoice]:
    """(the model in the chosen dtype — `model` itself when fp32 is chosen —, the choice). `dtype`: auto | fp32 |
    bf16; `compile`: auto | true | false | autotune; `expected_tokens`: decode steps the caller expects to run
    (for compile)."""
    if dtype not in ("auto", *DTYPES):
        raise SlmError(f"--dtype {dtype}: choose auto, fp32 or bf16")
    if compile not in ("auto", "true", "false", "autotune"):
        raise SlmError(f"--compile {compile}: choose auto, true, false or autotune")
    device = next(model.parameters()).device
    if device.type != "cpu":
        chosen = dtype if dtype != "auto" else ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
        return _cast(model, chosen), DecodeChoice(chosen, compile != "false", "CUDA rule (not measured)")
    dtypes = list(DTYPES) if dtype == "auto" else [dtype]
    key = _key(model, batch)
    load = _load()
    cached = _cached_entry(key, load)
    step_s: dict[str, float] = dict(cached.get("step_s", {}))
    setup_s: dict[str, float] = dict(cached.get("setup_s", {}))
    models = {"fp32": model}

    def candidate(name: str) -> CausalLM:
        base = name.split("+")[0]
        if base not in models:
            models[base] = _cast(model, base)
        return models[base]

    measured = False
    if len(dtypes) > 1 or compile != "false":
        for name in dtypes:
            if name not in step_s:
                step_s[name], setup_s[name] = time_decode(candidate(name), False, batch)
                measured = True
    best = min(dtypes, key=lambda n: step_s.get(n, 0.0))
    modes = {f"{best}+{m}": flag for m, flag in COMPILE_MODES.items()}  # candidate name -> DecodeEngine's compile
    mode: str | None = None  # the chosen compiled candidate, None = eager
    if compile == "auto":
        if expected_tokens >= MEASURE_COMPILE_MIN_TOKENS:
            for c in modes:
                if c not in step_s:
                    if log:
                        log(f"timing the compiled decode step ({c}); cached for this machine and model after this")
                    step_s[c], setup_s[c] = time_decode(candidate(best), modes[c], batch)
                    measured = True
        n = expected_tokens
        cost = {c: setup_s[c] + n * step_s[c] for c in modes if c in step_s}
        if cost and min(cost.values()) < n * step_s[best]:
            mode = min(cost, key=cost.__getitem__)
    elif compile == "true":
        timed = [c for c in modes if c in step_s]
        mode = min(timed, key=step_s.__getitem__) if len(timed) == len(modes) else f"{best}+compile"
    elif compile == "autotune":
        mode = f"{best}+autotune"
    if measured:
        write_machine_cache(CACHE_FILE, key, {"step_s": step_s, "setup_s": setup_s, "when": time.time(),
                                              "load": load})
    rates = ", ".join(f"{n} {batch / s:,.0f} tok/s" for n, s in step_s.items())
    source = "measured" if measured else "cached"
    summary = f"{mode or best} ({source}: {rates})" if step_s else "not measured"
    if log and step_s:
        log(f"decode weights/compile auto -> {summary}")
    chosen = candidate(best) if len(dtypes) > 1 or dtype != "fp32" else model
    return chosen, DecodeChoice(best, modes[mode] if mode else False, summary)


def _cast(model: CausalLM, dtype: str) -> CausalLM:
    if next(model.parameters()).dtype == DTYPES[dtype]:
        return model
    return copy.deepcopy(model).to(DTYPES[dtype])
