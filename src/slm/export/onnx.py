"""ONNX export: two graphs that ONNX Runtime runs, for every architecture whose pure steps trace.

- `prefill.onnx`: input_ids (B, T) int64, attention_mask (B, T) bool (False = left padding) -> logits (B, T, V) and
  the decode state (`state.0` ..) of a fresh state of `max_len` slots holding the prompt (`CausalLM.prefill`).
- `decode.onnx`: input_ids (B, 1), attention_mask (B, 1), `state.0` .. -> logits (B, 1, V), `present.0` .. : the
  pure decode step (`CausalLM.decode_step`). Feed `present.i` back as `state.i`.
B and T are dynamic; the state's length (max_len) is fixed at export. The state is whatever the architecture keeps
(a KV cache, Flow's ring buffers next to a KV cache, ...): the exporter never looks inside it, so a new architecture
exports by implementing the contract. `slm_onnx.json` lists the graphs' inputs/outputs, dtypes, max_len and the
tokenizer's special ids; `tokenizer/` holds the tokenizer files.

Design decisions
- `torch.onnx.export(dynamo=True)` (torch.export underneath, strict=False) rather than the TorchScript tracer: it
  keeps symbolic batch/length dims and refuses data-dependent Python control flow instead of silently baking in the
  traced branch. The prefill is traced at T >= 2 (a 1-token `forward` takes the decode-step path).
- What traces is the architecture's business, not the exporter's (no per-architecture code here): under
  `torch.compiler.is_exporting()` a model reads no host value and never branches or loops on the symbolic length.
  Llama, Flow, Pulse and Doge skip the position check (the state bounds it) and Doge's key selection is branch-free
  (a no-op top-k when there are few keys); HGRN-Bit's and H-Net's scans run a fixed log2(max_len) levels (so the
  prefill is exact for T <= max_len, the exported state's length); H-Net's chunk buffer holds T slots instead of
  the largest chunk count (the extra ones masked, as for shorter rows) and its running max / stable sort are a
  scatter + gather (ONNX has neither). Every registered architecture exports today.
- Each graph is exported once per checkpoint and checked by running it in onnxruntime when it is installed
  (`verify=True`); the tests hold prefill + decode to slm's logits (<= 1e-4 fp32) and greedy tokens. BitLinear
  models (8-bit activations) match up to a rare rounding flip: an ulp of kernel difference at a rounding boundary
  moves one level (tests/export/test_onnx.py bounds it).
- Written into a temp folder next to OUT and renamed (slm.errors.atomic_dir): an existing OUT is replaced only with
  `overwrite` and only when slm wrote it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import SlmError, atomic_dir, check_output_dir, os_errors

ONNX_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
META_FILE = "slm_onnx.json"


class _Prefill(nn.Module):
    def __init__(self, model: nn.Module, max_len: int) -> None:
        super().__init__()
        self.model, self.max_len = model, max_len

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, state = self.model.prefill(input_ids, attention_mask, self.max_len)
        return (logits, *state)


class _Decode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model.decode_step(input_ids, attention_mask, state)
        return (logits, *new_state)


def _require(module: str, hint: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SlmError(f"slm export onnx needs `{module}`; run: pip install {hint}") from None


def _export_graph(module: nn.Module, args: tuple, dynamic_shapes: tuple, input_names: list[str],
                  output_names: list[str], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                        input_names=input_names, output_names=output_names, verbose=False)
        except Exception as exc:  # torch.export / the ONNX translator raise many types for untraceable code
            raise SlmError(f"slm export onnx: this architecture's {path.stem} does not trace ({_why(exc)}); ONNX needs "
                           f"a step without data-dependent Python branches — run it with slm generate/serve") from None
    program.save(str(path))


def _why(exc: BaseException) -> str:
    """The cause of an export failure in one line: the slm source line torch.export stopped at, else the first line
    of the innermost error."""
    import re

    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    where = re.search(r'File "[^"]*/(slm/[^"]+)", line (\d+), in \w+\s+(.+)', text)
    if where:
        return f"{where.group(1)}:{where.group(2)}: {where.group(3).strip()[:120]}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{type(exc).__name__}: {first[:160]}"


def export_onnx(checkpoint_dir: str | Path, out_dir: str | Path, *, dtype: str = "fp32", max_len: int | None = None,
                overwrite: bool = False, verify: bool = True) -> Path:
    """Write prefill.onnx + decode.onnx + tokenizer/ + slm_onnx.json for the checkpoint."""
    from ..checkpoint import load_model, load_tokenizer_of

    if dtype not in ONNX_DTYPES:
        raise SlmError(f"--dtype={dtype!r}: choose one of {', '.join(ONNX_DTYPES)}")
    check_output_dir(out_dir, overwrite=overwrite)
    _require("onnxscript", "onnx onnxscript onnxruntime  (or: pip install 'slm[export]')")
    checkpoint_dir = Path(checkpoint_dir)
    tokenizer = load_tokenizer_of(checkpoint_dir)
    if tokenizer is None:
        raise SlmError(f"{checkpoint_dir}: the checkpoint has no tokenizer/ folder; an ONNX export carries its "
                       f"tokenizer (export from a run's checkpoint, or import one with a tokenizer)")
    model, _ = load_model(checkpoint_dir, dtype=ONNX_DTYPES[dtype])
    max_len = max_len or model.cfg.max_seq_len
    if not 2 < max_len <= model.cfg.max_seq_len:
        raise SlmError(f"--max-len={max_len}: choose 3 .. model.max_seq_len={model.cfg.max_seq_len}")
    from torch.export import Dim

    n_state = len(model.new_state(1, max_len).tensors())
    state_in = [f"state.{i}" for i in range(n_state)]
    state_out = [f"present.{i}" for i in range(n_state)]
    ids = torch.zeros(2, 2, dtype=torch.long)
    mask = torch.ones(2, 2, dtype=torch.bool)
    bt = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    out_dir = Path(out_dir)
    with torch.no_grad(), os_errors("exporting to", out_dir), \
            atomic_dir(out_dir, overwrite=overwrite, kind="onnx-export") as tmp:
        _export_graph(_Prefill(model, max_len), (ids, mask), (bt, bt), ["input_ids", "attention_mask"],
                      ["logits", *state_out], tmp / "prefill.onnx")
        _, state = model.prefill(ids, mask, max_len)
        b = {0: Dim.DYNAMIC}
        _export_graph(_Decode(model), (ids[:, :1], mask[:, :1], tuple(state)), (b, b, tuple(b for _ in state)),
                      ["input_ids", "attention_mask", *state_in], ["logits", *state_out], tmp / "decode.onnx")
        tokenizer.save(tmp / "tokenizer")
        meta = {
            "format": "slm-onnx", "arch": model.cfg.arch, "dtype": dtype, "max_len": max_len,
            "vocab_size": model.cfg.vocab_size,
            "state": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": ["batch", *t.shape[1:]]}
                      for n, t in zip(state_in, state)],
            "prefill": {"inputs": ["input_ids", "attention_mask"], "outputs": ["logits", *state_out]},
            "decode": {"inputs": ["input_ids", "attention_mask", *state_in], "outputs": ["logits", *state_out]},
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if verify:
            OnnxLM(tmp).greedy([[1, 2, 3]], 2)  # both graphs load and chain in onnxruntime
    return out_dir


class OnnxLM:
    """An exported folder run in onnxruntime: prefill once, then the decode graph per token (greedy)."""

    def __init__(self, folder: str | Path, *, threads: int | None = None) -> None:
        ort = _require("onnxruntime", "onnxruntime")
        folder = Path(folder)
        self.meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.prefill_session = ort.InferenceSession(str(folder / "prefill.onnx"), opts,
                                                    providers=["CPUExecutionProvider"])
        self.decode_session = ort.InferenceSession(str(folder / "decode.onnx"), opts,
                                                   providers=["CPUExecutionProvider"])

    def prefill(self, ids: Any, mask: Any) -> tuple[Any, list[Any]]:
        """ids (B, T) int64, mask (B, T) bool numpy arrays -> logits (B, T, V), state arrays."""
        logits, *state = self.prefill_session.run(None, {"input_ids": ids, "attention_mask": mask})
        return logits, state

    def step(self, ids: Any, mask: Any, state: list[Any]) -> tuple[Any, list[Any]]:
        feed = {"input_ids": ids, "attention_mask": mask}
        feed.update({s["name"]: t for s, t in zip(self.meta["state"], state)})
        logits, *state = self.decode_session.run(None, feed)
        return logits, state

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of left-padded prompts (no EOS stop: fixed length, for parity checks and benches)."""
        import numpy as np

        width = max(len(p) for p in prompts)
        if width + max_new_tokens - 1 > self.meta["max_len"]:
            raise SlmError(f"prompt ({width}) + new tokens ({max_new_tokens}) exceed the exported state's max_len="
                           f"{self.meta['max_len']}; export with a larger --max-len")
        ids = np.zeros((len(prompts), width), dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=bool)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):], mask[row, width - len(p):] = p, True
        logits, state = self.prefill(ids, mask)
        out: list[list[int]] = [[] for _ in prompts]
        nxt = logits[:, -1].argmax(-1)
        ones = np.ones((len(prompts), 1), dtype=bool)
        for i in range(max_new_tokens):
            for row in range(len(prompts)):
                out[row].append(int(nxt[row]))
            if i + 1 == max_new_tokens:
                break
            logits, state = self.step(nxt[:, None].astype(np.int64), ones, state)
            nxt = logits[:, -1].argmax(-1)
        return out
