"""GGUF export: one file that llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs, written with the `gguf` package.

This module is file I/O; which llama.cpp architecture a model is, its hyperparameter keys and any tensor re-layout
come from the architecture's `GGUFAdapter` (registry entry), tensor names from its HF adapter through the `gguf`
package's name map. An architecture without a GGUF adapter is refused with a one-line reason naming ONNX.

Design decisions
- Written in-process (no shell-out to llama.cpp's converter script): the converter needs the HF folder, the
  `sentencepiece` package and recognises a tokenizer only by hashing its output on a fixed text. Here the tokenizer's
  own tokenizer.json says what it is: the pre-tokenizer is read structurally and mapped to the llama.cpp name that runs
  the same split (GPT-2's regex -> `gpt-2`; SmolLM2's digits-then-GPT-2 -> `smollm`; a merge-free byte vocabulary
  -> `gpt-2`, since with no merges every byte stays a token whatever the split; it gets one inert merge, a letter
  and a digit, which no GPT-2 pre-token holds, because GGUF arrays cannot be empty and readers need the key). Anything else is refused rather than
  exported to a file that tokenizes differently ("pre-tokenizer not recognized" is the usual GGUF bug report).
- The vocabulary is padded to the model's embedding rows with UNUSED placeholder tokens (slm rounds vocab_size up to
  a multiple of 64; llama.cpp requires one token per embedding row). Specials are CONTROL tokens; BOS/EOS/PAD ids and
  the chat template travel in the standard keys; add_bos_token is false because slm prompts carry no BOS.
- dtypes: f32; f16 (matrices f16, norms f32); q8_0 (matrices in llama.cpp's 8-bit blocks of 32, quantized by the
  `gguf` package; a matrix whose rows do not split into blocks stays f16; norms f32) — llama.cpp's own conventions.
- The file is written to a temp path next to OUT and renamed (slm.errors.atomic_path); an existing OUT is replaced
  only with `overwrite`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..errors import SlmError, atomic_path
from ..models import ModelConfig, get_arch

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

GGUFDtype = Literal["f32", "f16", "q8_0"]
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "q8_0")
_Q8_BLOCK = 32  # values per Q8_0 block (one f16 scale + 32 int8)


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise SlmError("slm export gguf needs the `gguf` package; run: pip install gguf") from None
    return gguf


def check_exportable(cfg: ModelConfig) -> None:
    """SlmError (one line, naming the format that works) when llama.cpp cannot run `cfg`'s architecture."""
    spec = get_arch(cfg.arch)
    if spec.gguf is None or spec.hf is None:
        raise SlmError(f"slm export gguf: llama.cpp has no architecture for {spec.name!r} models; export it with "
                       f"`slm export onnx` (ONNX Runtime) instead")
    reason = spec.gguf.refusal(cfg) or spec.hf.refusal(cfg)
    if reason:
        raise SlmError(f"slm export gguf: {reason}; export it with `slm export onnx` instead")


# ---------------------------------------------------------------------------------------------------------------- #
# tokenizer


def llama_cpp_pre_tokenizer(tok_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name that splits text like this tokenizer.json does; SlmError if none does."""
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or (tok_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise SlmError("slm export gguf: only byte-level BPE tokenizers (slm's BPE and byte tokenizers, GPT-2, "
                       "SmolLM2) map onto llama.cpp; export with `slm export onnx` or `slm export hf` instead")
    if tok_json.get("normalizer"):
        raise SlmError(f"slm export gguf: the tokenizer's normalizer ({tok_json['normalizer'].get('type')}) has no "
                       f"llama.cpp equivalent; export with `slm export onnx` or `slm export hf` instead")
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]

    def gpt2_byte_level(step: dict[str, Any]) -> bool:
        return step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False) \
            and step.get("use_regex", True)

    if len(steps) == 1 and gpt2_byte_level(steps[0]):
        return "gpt-2"
    if len(steps) == 1 and kinds == ["ByteLevel"] and not steps[0].get("add_prefix_space") and not model.get("merges"):
        return "gpt-2"  # the byte tokenizer: without merges every byte is a token whatever the split
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and gpt2_byte_level(steps[1]):
        return "smollm"  # each digit alone, then GPT-2's regex
    raise SlmError(f"slm export gguf: the tokenizer's pre-tokenizer {kinds} has no llama.cpp equivalent; export with "
                   f"`slm export onnx` or `slm export hf` instead")


def _merges(tok_json: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]


# A letter and a digit never share a GPT-2 pre-token (` ?\p{L}+` and ` ?\p{N}+` are separate alternatives), so this
# merge can never apply: it only gives a merge-free byte vocabulary the non-empty merge list a GGUF reader requires.
_INERT_MERGE = "a 1"


def add_tokenizer(writer: Any, tokenizer: Tokenizer, n_vocab: int) -> None:
    """Write `tokenizer` as llama.cpp's `gpt2` (byte-level BPE) vocabulary of exactly `n_vocab` tokens."""
    gguf = _require_gguf()
    tok_json = json.loads(tokenizer.to_json())
    pre = llama_cpp_pre_tokenizer(tok_json)
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    merges = _merges(tok_json)
    inert = None
    if not merges:  # the byte tokenizer; a GGUF array cannot be empty and llama.cpp requires the key
        if n_vocab <= tokenizer.vocab_size:
            raise SlmError("slm export gguf: a merge-free byte vocabulary needs one spare embedding row (model."
                           "vocab_size > the tokenizer's ids) to hold an inert merge; export with `slm export onnx`")
        inert = tokenizer.vocab_size
        merges = [_INERT_MERGE]
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        piece = tokenizer.id_to_token(i) if i < tokenizer.vocab_size else None
        if i == inert:
            tokens.append(_INERT_MERGE.replace(" ", ""))
            types.append(gguf.TokenType.UNUSED)
        elif piece is None:
            tokens.append(f"[PAD{i}]")  # embedding rows past the tokenizer (vocab rounded up to 64)
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(False)  # slm encodes prompts without BOS (slm.cli.generate)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


# ---------------------------------------------------------------------------------------------------------------- #
# tensors


def _encode(tensor: torch.Tensor, dtype: str, gguf: Any) -> tuple[np.ndarray, Any]:
    """(data, GGMLQuantizationType) of one tensor in llama.cpp's conventions for `dtype`."""
    data = tensor.detach().to("cpu", torch.float32).numpy()
    if dtype == "f32" or data.ndim < 2:
        return data, gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def export_gguf(checkpoint_dir: str | Path, out_path: str | Path, *, dtype: str = "f16", overwrite: bool = False,
                name: str | None = None) -> Path:
    """Write the checkpoint as one GGUF file (weights, llama.cpp metadata, tokenizer, chat template)."""
    from ..checkpoint import load_config, load_model, load_tokenizer_of

    if dtype not in GGUF_DTYPES:
        raise SlmError(f"--dtype={dtype!r}: choose one of {', '.join(GGUF_DTYPES)}")
    out_path = Path(out_path)
    _check_output_file(out_path, overwrite)
    gguf = _require_gguf()
    checkpoint_dir = Path(checkpoint_dir)
    run_cfg = load_config(checkpoint_dir)
    check_exportable(run_cfg.model)  # before loading any weights
    tokenizer = load_tokenizer_of(checkpoint_dir)
    if tokenizer is None:
        raise SlmError(f"{checkpoint_dir}: the checkpoint has no tokenizer/ folder; a GGUF file must carry its "
                       f"tokenizer (export from a run's checkpoint, or import one with a tokenizer)")
    if tokenizer.vocab_size > run_cfg.model.vocab_size:
        raise SlmError(f"{checkpoint_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model embeds only "
                       f"{run_cfg.model.vocab_size}; the checkpoint is inconsistent")
    model, _ = load_model(checkpoint_dir)
    cfg: ModelConfig = model.cfg
    spec = get_arch(cfg.arch)
    arch = spec.gguf.arch_name(cfg)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), cfg.n_layers)
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name or run_cfg.run.name or "slm")
        writer.add_file_type(getattr(gguf.LlamaFileType, _FILE_TYPES[dtype]))
        if dtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in spec.gguf.hparams(cfg).items():
            _add_value(writer, key.format(arch=arch), value, gguf)
        add_tokenizer(writer, tokenizer, cfg.vocab_size)
        for slm_name, tensor in model.state_dict().items():
            hf_name = spec.hf.to_hf_name(slm_name)
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise SlmError(f"slm export gguf: tensor {hf_name!r} has no GGUF name for llama.cpp's {arch!r}; "
                               f"export with `slm export onnx` instead")
            data, qtype = _encode(spec.gguf.to_gguf_tensor(hf_name, tensor, cfg), dtype, gguf)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def _check_output_file(path: Path, overwrite: bool) -> None:
    """Refuse a directory, an existing file without `overwrite`, and with it any file that is not a GGUF (a user's
    other file is never replaced)."""
    if path.is_dir():
        raise SlmError(f"{path}: is a directory; pass the path of the .gguf file to write")
    if not path.exists():
        return
    if not overwrite:
        raise SlmError(f"{path}: already exists; choose another path or pass --overwrite to replace an earlier export")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SlmError(f"{path}: exists and is not a GGUF file; refusing to replace it even with --overwrite — "
                           f"move it away yourself or choose another path")


def _add_value(writer: Any, key: str, value: Any, gguf: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))


class LlamaCppLM:
    """A GGUF file run in llama.cpp through llama-cpp-python: tokenize, greedy continuation, teacher-forced logits.
    What the slow tests and bench/export.py check exports with (build it with scripts/install_llama_cpp.sh)."""

    def __init__(self, path: str | Path, *, n_ctx: int = 512, threads: int | None = None,
                 f32_cache: bool = True) -> None:
        """`f32_cache`: keep llama.cpp's KV cache in f32 (its default is f16, which moves f32 logits by ~1e-2)."""
        import os

        try:
            from llama_cpp import Llama
        except ImportError:
            raise SlmError("running a GGUF needs llama-cpp-python; run: bash scripts/install_llama_cpp.sh") from None
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads or os.cpu_count(),
                         logits_all=True, verbose=False, seed=0,
                         **({"type_k": 0, "type_v": 0} if f32_cache else {}))  # 0 = GGML_TYPE_F32

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids of `text` (no BOS; special-token strings matched, as slm does)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation (argmax each step, no penalties, no EOS stop)."""
        out: list[int] = []
        self.llm.reset()
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                       reset=True):
            out.append(int(token))
            if len(out) == max_new_tokens:
                break
        return out

    def logits(self, ids: list[int]) -> np.ndarray:
        """(T, V) next-token logits at every position of `ids`."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)
