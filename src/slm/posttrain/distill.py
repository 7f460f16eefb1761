"""Distillation: a teacher writes responses (`slm distill generate`) and logit distillation (`slm distill kd`).

Teacher generation writes one JSON object per prompt, one per line (schema "slm-distill-v1"):
    {"id": str,                 # the prompt record's "id", else a hash of its messages (stable across runs)
     "messages": [...],         # the prompt messages + {"role": "assistant", "content": response}: `slm sft` input
     "response": str, "finish_reason": "stop" | "length",   # length = cut at max_new_tokens
     "prompt_tokens": int, "completion_tokens": int, "teacher": str, "source": "file:line",
     "sampling": {"temperature", "top_p", "max_new_tokens", "seed"}, "schema": "slm-distill-v1"}
`slm sft` on this file refuses (or with on_bad_example=skip, skips and counts) finish_reason=length records, so a
response cut mid-sentence is never trained on as if it ended there.

Decisions (generation):
- Resumable by construction: the output is appended batch by batch (flush + fsync), and a restart reads the ids
  already written and generates only the rest. A crash can tear at most the last line; it is cut off on restart.
  This file is therefore the one output not written through `atomic_path`: a temp-and-rename file would lose all
  finished work on a crash, which is exactly what resuming is for.
- Batches are fixed slices of the prompt list, each drawn with seed + batch index, and a batch is regenerated whole if
  any of its prompts is missing (only the missing lines are written), so a resumed run writes what an uninterrupted
  one would have, also when sampling.
- The prompt goes through the teacher's own chat template and generation stops at its end-of-turn token.
- A teacher is an slm checkpoint or an HF Llama-family folder, loaded in memory through `slm.export.hf`'s mapping
  (no trust_remote_code); a .gguf file is converted through `slm import hf` into a temporary checkpoint.

Decisions (KD):
- Per trained token: alpha * T^2 * KL + (1 - alpha) * CE, with KL forward, KL(teacher || student) (mass covering, the
  classic Hinton loss), or reverse, KL(student || teacher) (mode seeking, MiniLLM/GKD's choice for generation). T^2
  keeps gradient scale independent of T. Only assistant tokens count, as in SFT, and `count` is their number.
- Both distributions are restricted to the ids both models have (the student may pad its vocabulary to 64), and the
  tokenizers must be identical (same hash) — logits over different vocabularies cannot be compared.
- Logits are computed for trained positions only, in row chunks, the student's under activation checkpointing, so
  neither model ever holds (B, T, V) logits for backward.
- Teacher logits are recomputed each step by default. With `kd.topk = K` the teacher's top-K log-probs at every
  trained position are computed once (train and val), saved to <run dir>/teacher_topk.safetensors (reused when the
  teacher, K and examples match: resumes and reruns skip it) and the teacher is freed; the KL is then taken over those
  K ids with both distributions renormalised there (exact for K = vocab, tested). It trades a pass over the data and
  a few hundred bytes per token for no teacher forward per step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from ..config import RunConfig
from ..errors import SlmError
from ..models import CausalLM, IGNORE_INDEX, build_model
from ..tokenizer import Tokenizer
from .. import checkpoint as ckpt
from ..checkpoint import unwrap
from ..train.task import Batch
from .config import GenerateConfig, KDConfig
from .data import BadExamples, Example, load_prompts
from .sequence import batch_hidden, pad_batch, shift_example
from .sft import SFTTask

SCHEMA = "slm-distill-v1"


# ------------------------------------------------------------------------------------------------------------ teacher


def load_teacher(spec: str, device: torch.device | str = "cpu") -> tuple[CausalLM, Tokenizer | None]:
    """A frozen teacher and its tokenizer from an slm checkpoint/run dir, an HF model folder or a .gguf file."""
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        from ..export.hf import import_hf

        with tempfile.TemporaryDirectory(prefix="slm-teacher-") as tmp:
            out = import_hf(path, Path(tmp) / "teacher")
            return load_teacher(str(out), device)
    if (path / "config.json").is_file() and not (path / "meta.json").is_file():
        model, tok = _load_hf_folder(path)
    else:
        resolved = ckpt.resolve_checkpoint(path)
        model, _ = ckpt.load_model(resolved, device="cpu")
        tok = ckpt.load_tokenizer_of(resolved)
    model.to(device).requires_grad_(False)
    return model.eval(), tok


def _load_hf_folder(path: Path) -> tuple[CausalLM, Tokenizer | None]:
    from ..export.hf import model_config_from_hf, read_hf_weights, state_dict_from_hf
    from ..tokenizer import load_tokenizer

    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlmError(f"{path / 'config.json'}: unreadable ({type(exc).__name__}); re-download the model") from None
    cfg = model_config_from_hf(raw, where=str(path / "config.json"))
    state = state_dict_from_hf(read_hf_weights(path), cfg, where=str(path))
    model = build_model(cfg, device="cpu")
    model.load_state_dict(state)
    tok = load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    return model, tok


# ------------------------------------------------------------------------------------------------------- generation


def _read_done(out: Path) -> set[str]:
    """Ids already written; a torn last line (crash mid-write) is truncated away first."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        with open(out, "r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    done = set()
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SlmError(f"{out}:{n}: not a distill record; write to a new --posttrain.generate.output") from None
    return done


def generate_responses(gen: GenerateConfig, *, bad: BadExamples, device: torch.device | str = "cpu",
                       progress: bool = True) -> dict[str, Any]:
    """Write teacher responses for every prompt not yet in `gen.output`; returns counts."""
    from ..generate.engine import generate
    from ..config import SamplingConfig
    from ..tokenizer.chat_template import ChatFormatter

    for key in ("teacher", "prompts", "output"):
        if not getattr(gen, key):
            raise SlmError(f"--posttrain.generate.{key}: required for slm distill generate")
    if gen.batch_size < 1:
        raise SlmError(f"--posttrain.generate.batch_size={gen.batch_size}: must be >= 1")
    teacher, tok = load_teacher(gen.teacher, device)
    if tok is None:
        raise SlmError(f"{gen.teacher}: teacher has no tokenizer; generation needs one")
    formatter = ChatFormatter(tok)
    prompts = load_prompts([gen.prompts], bad, specials=formatter.specials)
    unique = list({p.id: p for p in prompts}.values())
    out = Path(gen.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out)
    todo = sum(p.id not in done for p in unique)
    written = 0
    bar = tqdm(total=len(unique), initial=len(unique) - todo, disable=not progress, unit="prompt", desc="distill")
    try:
        with open(out, "a", encoding="utf-8") as f:
            for k in range(0, len(unique), gen.batch_size):
                batch = unique[k:k + gen.batch_size]
                if all(p.id in done for p in batch):
                    continue
                cfg = SamplingConfig(temperature=gen.temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                                     seed=gen.seed + k // gen.batch_size)
                ids = [formatter.encode_prompt(p.messages) for p in batch]
                outs = generate(teacher, ids, cfg, eos_id=formatter.end_of_turn_id)
                lines = []
                for p, prompt_ids, o in zip(batch, ids, outs):
                    if p.id in done:
                        continue
                    response = tok.decode(o, skip_special=True)
                    lines.append(json.dumps({
                        "id": p.id, "messages": [*p.messages, {"role": "assistant", "content": response}],
                        "response": response, "finish_reason": "length" if len(o) >= gen.max_new_tokens else "stop",
                        "prompt_tokens": len(prompt_ids), "completion_tokens": len(o), "teacher": gen.teacher,
                        "source": p.where, "schema": SCHEMA,
                        "sampling": {"temperature": gen.temperature, "top_p": gen.top_p,
                                     "max_new_tokens": gen.max_new_tokens, "seed": cfg.seed}}, ensure_ascii=False))
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
                written += len(lines)
                bar.update(len(lines))
    finally:
        bar.close()
    return {"prompts": len(unique), "already_done": len(unique) - todo, "written": written, "output": str(out),
            "skipped_prompts": bad.total}


# ---------------------------------------------------------------------------------------------------------------- KD


def kd_token_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                    kd: KDConfig) -> torch.Tensor:
    """Per-token alpha * T^2 * KL + (1 - alpha) * CE for logits (n, V_s), (n, V_t) and targets (n,) -> (n,)."""
    V = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s, t = student_logits.float(), teacher_logits.float()
    T = kd.temperature
    log_ps = F.log_softmax(s[:, :V] / T, -1)
    log_pt = F.log_softmax(t[:, :V] / T, -1)
    return _mix_kl_ce(log_ps, log_pt, s, targets, kd)


def _mix_kl_ce(log_ps: torch.Tensor, log_pt: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor,
               kd: KDConfig) -> torch.Tensor:
    """alpha * T^2 * KL (forward: KL(teacher || student), reverse: KL(student || teacher)) + (1 - alpha) * CE, (n,)."""
    if kd.loss == "forward":
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    else:
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(-1)
    out = kd.alpha * kd.temperature ** 2 * kl
    if kd.alpha < 1.0:
        out = out + (1.0 - kd.alpha) * F.cross_entropy(student_logits, targets, reduction="none")
    return out


def kd_topk_token_losses(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor,
                         targets: torch.Tensor, kd: KDConfig) -> torch.Tensor:
    """Like `kd_token_losses`, with the teacher known only on its top-k ids (n, k) (log-probs (n, k)): both
    distributions are restricted to those ids and renormalised (at temperature T). With k = vocab this is exact."""
    s = student_logits.float()
    T = kd.temperature
    log_ps = F.log_softmax(s.gather(-1, topk_ids) / T, -1)
    log_pt = F.log_softmax(topk_logp.float() / T, -1)
    return _mix_kl_ce(log_ps, log_pt, s, targets, kd)


def _kd_chunk(h: torch.Tensor, w: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, kd: KDConfig,
              topk_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Summed KD loss of a chunk: `teacher` is full logits (n, V_t), or top-k ids (n, k) when `topk_logp` is given."""
    if topk_logp is None:
        return kd_token_losses(F.linear(h, w), teacher, y, kd).sum()
    return kd_topk_token_losses(F.linear(h, w), teacher, topk_logp, y, kd).sum()


# ------------------------------------------------------------------------------------------------- cached teacher


class TopKCache:
    """The teacher's top-k log-probs at every trained position of the train and val examples, in example order."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = tensors

    def rows(self, split: str, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (n, k) long, log-probs (n, k)) of the trained positions of `indices`, concatenated in that order."""
        offsets = self.t[f"{split}_offsets"]
        parts = [(int(offsets[i]), int(offsets[i + 1])) for i in indices]
        ids = torch.cat([self.t[f"{split}_ids"][a:b] for a, b in parts]).long()
        logp = torch.cat([self.t[f"{split}_logp"][a:b] for a, b in parts])
        return ids, logp


def _teacher_topk(teacher: CausalLM, examples: list[Example], k: int, pad_id: int, device: torch.device,
                  batch_size: int = 8, chunk: int = 1024) -> dict[str, torch.Tensor]:
    offsets, ids, logps = [0], [], []
    for s in range(0, len(examples), batch_size):
        b = pad_batch([shift_example(e.ids, e.mask) for e in examples[s:s + batch_size]], pad_id).to(device)
        x, y = b.input_ids, b.targets
        with torch.no_grad():
            h = teacher(x, return_hidden=True)[y != IGNORE_INDEX]  # (n, C), row-major = example order
            for c in range(0, h.shape[0], chunk):
                lp = F.linear(h[c:c + chunk], teacher.output_weight).float().log_softmax(-1)
                v, i = lp.topk(min(k, lp.shape[-1]), dim=-1)
                ids.append(i.to(torch.int32).cpu())
                logps.append(v.cpu())
        for n in (y != IGNORE_INDEX).sum(-1).tolist():
            offsets.append(offsets[-1] + n)
    return {"offsets": torch.tensor(offsets, dtype=torch.int64), "ids": torch.cat(ids), "logp": torch.cat(logps)}


def topk_cache(path: Path, teacher: CausalLM, train: list[Example], val: list[Example], *, k: int, pad_id: int,
               device: torch.device, teacher_name: str) -> TopKCache:
    """Load the cache at `path` when it was made from the same teacher, k and examples; else build and save it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from ..errors import atomic_path
    from .data import content_id

    fingerprint = content_id([teacher_name, k, [(e.ids, e.mask) for e in train], [(e.ids, e.mask) for e in val]])
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                same = (f.metadata() or {}).get("fingerprint") == fingerprint
            if same:
                return TopKCache(load_file(str(path)))
        except (SafetensorError, OSError):
            pass  # unreadable: rebuilt below
    tensors = {}
    for split, examples in (("train", train), ("val", val)):
        if examples:
            for key, t in _teacher_topk(teacher, examples, k, pad_id, device).items():
                tensors[f"{split}_{key}"] = t
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint, "teacher": teacher_name, "k": str(k)})
    return TopKCache(tensors)


# ---------------------------------------------------------------------------------------------------------- KD task


@dataclass(kw_only=True)
class KDBatch(Batch):
    """An SFT batch plus the examples its rows hold, to find their rows in the teacher's top-k cache.

    The cached log-probs are looked up at loss time, not stored here: the loader then never depends on the teacher,
    and one batch works with a live teacher and with a cache alike."""

    example_ids: list[int]  # indices into the split's examples, in row-major order of their trained positions
    split: str = "train"  # which split's cache rows: train | val

    @classmethod
    def of(cls, batch: Batch, example_ids: list[int], split: str = "train") -> KDBatch:
        base = {f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)}
        return cls(**base, example_ids=example_ids, split=split)


class KDTask(SFTTask):
    """SFT data and batching; the loss mixes KL to a frozen teacher (live or cached top-k) with the data's CE."""

    def __init__(self, train: list[Example], val: list[Example], cfg: RunConfig, kd: KDConfig, *,
                 teacher: CausalLM | None, teacher_tokenizer: Tokenizer | None, tokenizer: Tokenizer, pad_id: int,
                 packing: bool = False, autocast_dtype: torch.dtype | None = None,
                 cache: TopKCache | None = None) -> None:
        super().__init__(train, val, cfg, pad_id=pad_id, packing=packing, autocast_dtype=autocast_dtype)
        if teacher_tokenizer is not None and teacher_tokenizer.hash() != tokenizer.hash():
            raise SlmError("--posttrain.kd.teacher: the teacher's tokenizer differs from the student's; logit "
                           "distillation needs one shared vocabulary (use slm distill generate + slm sft instead)")
        if teacher is None and cache is None:
            raise SlmError("KD needs a teacher model or a cache of its top-k log-probs")
        self.kd, self.teacher, self.cache = kd, teacher, cache

    # batches carry their example indices so cached teacher rows can be looked up
    def collate_padded(self, rows: list[list[int]]) -> KDBatch:
        return KDBatch.of(super().collate_padded(rows), [i for r in rows for i in r])

    def collate_packed(self, rows: list[list[int]], width: int) -> KDBatch:
        return KDBatch.of(super().collate_packed(rows, width), [i for r in rows for i in r])

    def _teacher_hidden(self, batch: Batch) -> torch.Tensor:
        self.teacher.to(self.device)
        with torch.no_grad():
            return batch_hidden(self.teacher, batch.to(self.device))

    def _summed(self, model: torch.nn.Module, batch: KDBatch, kd: KDConfig, chunk: int) -> torch.Tensor:
        hidden, y = self.hidden(model, batch)
        valid = y != IGNORE_INDEX
        hs, yv = hidden[valid], y[valid]  # (n, C), (n,): row-major, i.e. the order of the cached rows
        w = unwrap(model).output_weight
        if self.cache is not None:
            ids, logp = (t.to(self.device) for t in self.cache.rows(batch.split, batch.example_ids))
        else:
            ht = self._teacher_hidden(batch)[valid]
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hs.shape[0], chunk):
            if self.cache is not None:
                teacher, extra = ids[s:s + chunk], logp[s:s + chunk]
            else:
                with torch.no_grad():
                    teacher, extra = F.linear(ht[s:s + chunk], self.teacher.output_weight), None
            args = (hs[s:s + chunk], w, teacher, yv[s:s + chunk], kd, extra)
            total = total + (checkpoint(_kd_chunk, *args, use_reentrant=False) if torch.is_grad_enabled()
                             else _kd_chunk(*args))
        return total

    def loss(self, model: torch.nn.Module, batch: KDBatch, loss_chunk: int) -> torch.Tensor:
        return self._summed(model, batch, self.kd, loss_chunk)

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        """Held-out CE loss (comparable with plain SFT) plus the KL to the teacher at T=1 (on its top-k if cached)."""
        out = super().evaluate(model, seq_len, max_batches)
        if not out:
            return out
        probe = KDConfig(teacher=self.kd.teacher, loss=self.kd.loss, alpha=1.0, temperature=1.0)
        shifted = [shift_example(e.ids, e.mask) for e in self.val_examples]
        bs, kl, n = self.cfg.eval.batch_size, 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for b, s in enumerate(range(0, len(shifted), bs)):
                    if max_batches and b >= max_batches:
                        break
                    ids = list(range(s, min(s + bs, len(shifted))))
                    batch = KDBatch.of(pad_batch(shifted[s:s + bs], self.pad_id), ids, "val")
                    kl += float(self._summed(model, batch, probe, self.cfg.train.loss_chunk))
                    n += self.count(batch)
        finally:
            model.train(was_training)
        return {**out, "kl_to_teacher": kl / max(n, 1)}
