"""lm-evaluation-harness over slm checkpoints: an `lm_eval` model class (`SlmLM`) and `run_tasks`, which scores a
checkpoint on lm-eval tasks (standard ones when their data is available, or slm's offline task files, see
`slm.eval.offline_tasks`) and returns lm-eval's own result dict.

Decisions:
- `SlmLM` subclasses lm-eval's `TemplateLM`, so context/continuation splitting (trailing spaces move to the
  continuation, empty contexts get the prefix token) is lm-eval's code, not a copy. What is written here is scoring
  token ids with an slm model and generating with slm's decode engine.
- It reproduces `HFLM` (lm-eval's transformers backend) on the same weights: no BOS added by `tok_encode`, the
  prefix token is BOS when the tokenizer has one (else EOS), sequences are cut from the left to the model's context
  (`max_seq_len`, which HF export writes as `max_position_embeddings`), rolling log-likelihoods use lm-eval's own
  window functions with one token of context. tests/eval/test_harness.py holds the two backends to <= 1e-4 per
  log-likelihood and identical accuracies on the same exported model.
- Batching: requests are sorted by length (longest first, as HFLM does) and right-padded; a causal model's logits at
  real positions do not depend on padding to their right, so no attention mask is needed.
- `generate_until` runs greedy or sampled generation through `slm.generate` in batches of requests with equal
  settings, then cuts each output at the first stop string (what HFLM's stopping criteria also leave).
- Every registered architecture works: only `forward` and the decode engine are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SlmError


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401  (the package itself: its absence is the error to report)
        from lm_eval.api.model import TemplateLM
    except ImportError:
        raise SlmError("slm eval --tasks needs lm-evaluation-harness: pip install 'slm[eval]' "
                       "(or pip install lm-eval)") from None
    return TemplateLM


def make_lm(model: Any, tokenizer: Any, *, batch_size: int = 8, max_gen_toks: int = 256, seed: int = 0):
    """An lm-eval model over an slm model and tokenizer (see `SlmLM`)."""
    TemplateLM = _require_lm_eval()

    class SlmLM(TemplateLM):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()
            self.tok = tokenizer
            self.batch_size = batch_size
            self.max_gen_toks = max_gen_toks
            self.seed = seed
            self.generations: list[tuple[str, int]] = []  # every generate_until output (text, tokens)

        @property
        def eot_token_id(self) -> int:
            return self.tok.eos_id

        @property
        def prefix_token_id(self) -> int:
            return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

        @property
        def max_length(self) -> int:
            return self.model.cfg.max_seq_len

        @property
        def tokenizer_name(self) -> str:
            return "slm"

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            return self.tok.encode(string)

        def tok_decode(self, tokens: list[int]) -> str:
            return self.tok.decode(tokens)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                                  **kwargs) -> list[tuple[float, bool]]:
            return score_continuations(self.model, [(ctx, cont) for _, ctx, cont in requests],
                                       override_bs or self.batch_size, self.max_length)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval import utils

            out = []
            for (string,) in [r.args for r in requests]:
                windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]
                scores = score_continuations(self.model, windows, self.batch_size, self.max_length)
                out.append(sum(s for s, _ in scores))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            return generate_until(self.model, self.tok, [r.args for r in requests], batch_size=self.batch_size,
                                  max_gen_toks=self.max_gen_toks, seed=self.seed, record=self.generations)

    return SlmLM()


@torch.inference_mode()
def score_continuations(model: Any, pairs: list[tuple[list[int], list[int]]], batch_size: int,
                        max_length: int) -> list[tuple[float, bool]]:
    """(summed log-probability of each continuation given its context, whether it is the greedy continuation)."""
    device = next(model.parameters()).device
    rows = []
    for ctx, cont in pairs:
        ids = (ctx + cont)[-(max_length + 1):][:-1]  # the model sees all but the last token; cut from the left
        rows.append((ids, cont))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i][0]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, :len(rows[i][0])] = torch.tensor(rows[i][0])
        logprobs = F.log_softmax(model(ids.to(device)).float(), dim=-1)  # (B, T, V)
        for b, i in enumerate(chunk):
            seq, cont = rows[i]
            cont = cont[-len(seq):]  # a continuation longer than the context window: its last max_length tokens
            n = len(cont)
            lp = logprobs[b, len(seq) - n:len(seq)]  # (n, V): the positions predicting the continuation
            target = torch.tensor(cont, device=lp.device)
            total = float(lp.gather(1, target[:, None]).sum())
            out[i] = (total, bool((lp.argmax(-1) == target).all()))
    return out


def generate_until(model: Any, tokenizer: Any, requests: list[tuple[str, dict]], *, batch_size: int,
                   max_gen_toks: int, seed: int, record: list[tuple[str, int]] | None = None) -> list[str]:
    """lm-eval's generate_until: each (context, gen_kwargs) continued until a stop string or max_gen_toks. `record`
    collects (full generation, its token count) for `slm.eval.generation.generation_stats`."""
    from ..config import SamplingConfig
    from ..generate import generate

    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, (_, kwargs) in enumerate(requests):
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 0.0)) > 0
        key = (tuple(until), int(kwargs.get("max_gen_toks", max_gen_toks)),
               float(kwargs.get("temperature", 1.0)) if sample else 0.0, float(kwargs.get("top_p", 1.0)) if sample
               else 1.0)
        groups.setdefault(key, []).append(i)
    for (until, max_new, temperature, top_p), idx in groups.items():
        cfg = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=max_new, seed=seed)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            prompts = [tokenizer.encode(requests[i][0]) or [tokenizer.bos_id or tokenizer.eos_id] for i in chunk]
            for i, new in zip(chunk, generate(model, prompts, cfg, eos_id=tokenizer.eos_id)):
                text = tokenizer.decode(new)
                if record is not None:
                    record.append((text, len(new)))
                for stop in until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                out[i] = text
    return [t or "" for t in out]


def run_tasks(checkpoint: str | Path, tasks: list[str], *, limit: int | None = None, num_fewshot: int | None = None,
              batch_size: int = 8, device: str = "auto", include_path: str | Path | None = None,
              seed: int = 1234) -> dict:
    """Score a checkpoint on lm-eval tasks; returns lm-eval's results dict (``results``, ``configs``, ...)."""
    _require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .. import checkpoint as ckpt
    from ..runtime import resolve_device
    from .offline_tasks import offline_task_dir

    path = ckpt.resolve_checkpoint(checkpoint)
    tokenizer = ckpt.load_tokenizer_of(path)
    if tokenizer is None:
        raise SlmError(f"{path}: checkpoint has no tokenizer; lm-eval tasks need text (re-save it with one)")
    model, _ = ckpt.load_model(path, device=resolve_device(device))
    manager = TaskManager(include_path=[str(p) for p in (offline_task_dir(), include_path) if p])
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SlmError(f"--tasks: unknown task(s) {', '.join(unknown)}; `slm eval --list-tasks` shows slm's offline "
                       f"tasks, lm-eval's standard ones need their data (see README: Evaluation)")
    lm = make_lm(model, tokenizer, batch_size=batch_size, seed=seed)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                   random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                   fewshot_random_seed=seed, log_samples=False, bootstrap_iters=0)
    results["slm_random_baseline"] = random_baselines(manager, list(results["results"]))
    if lm.generations:
        from .generation import generation_stats

        texts, lengths = zip(*lm.generations)
        results["slm_generation"] = generation_stats(list(texts), list(lengths))
    return results


def random_baselines(manager: Any, tasks: list[str]) -> dict[str, float]:
    """Expected accuracy of a uniform random pick for each multiple-choice task among `tasks` (mean of 1/#choices over
    its examples, all of them: the baseline does not depend on --limit)."""
    out = {}
    for name, task in manager.load_task_or_group(tasks).items():
        if not hasattr(task, "OUTPUT_TYPE") or task.OUTPUT_TYPE != "multiple_choice":
            continue
        docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
        if docs:
            out[name] = sum(1 / max(1, len(task.doc_to_choice(d))) for d in docs) / len(docs)
    return out


def format_results(results: dict) -> str:
    """lm-eval's result dict as one Markdown table: task, metric, value, with the random-guess baseline of
    multiple-choice tasks beside it."""
    lines = ["| task | metric | value | random guess |", "|---|---|---|---|"]
    baselines = results.get("slm_random_baseline", {})
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or "stderr" in key or not isinstance(value, (int, float)):
                continue
            metric = key.split(",")[0]
            base = baselines.get(task) if metric in ("acc", "acc_norm") else None
            lines.append(f"| {task} | {metric} | {value:.4f} | {'-' if base is None else f'{base:.4f}'} |")
    gen = results.get("slm_generation")
    if gen:
        lines += ["", "generations: " + ", ".join(f"{k} {v:.3f}" for k, v in gen.items())]
    return "\n".join(lines)


def results_path(checkpoint: str | Path, results: dict) -> Path:
    """Save `results` beside the checkpoint's run: <run dir>/eval/lm_eval_<checkpoint name>.json (a checkpoint
    directory itself stays exactly what its manifest lists)."""
    import json

    from .. import checkpoint as ckpt
    from ..errors import atomic_write_text

    path = ckpt.resolve_checkpoint(checkpoint)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out = run_dir / "eval" / f"lm_eval_{path.name}.json"
    keep = {k: results[k] for k in ("results", "groups", "n-shot", "slm_random_baseline", "slm_generation", "config")
            if k in results}
    atomic_write_text(out, json.dumps(keep, indent=2, default=str))
    return out
