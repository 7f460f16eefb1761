"""Run configuration: nested dataclasses <-> YAML recipes, with `--section.key=value` overrides.

Resolution order: dataclass defaults, then the recipe YAML, then CLI overrides. Every key is checked against the
dataclass fields (an unknown key is an error naming it and listing the valid ones) and every value against the field's
type (`--train.lr=abc` is an error, `--train.lr=3e-4` is a float even though YAML 1.1 reads it as a string). A field
with a fixed set of values is typed `Literal[...]`; `check_choice` is the one check of such a value, run both when a
recipe is read and in each section's `__post_init__` (Python callers), and `--help` lists the choices. The
resolved config is written beside every run and checkpoint (`config.yaml`); loading a checkpoint rebuilds its model
from that file. A model section may name a preset (`model.preset: smollm2-135m`); its values fill every field the
recipe did not set itself.

Values are validated at this boundary, before any work: every section's `__post_init__` checks ranges and finiteness
through `check_values` (one rule table per section: `--train.lr=nan`, `--train.phases=[{steps: -1}]`), a model
config that its architecture's own checks cannot even evaluate (`n_heads=0`) is one line, and `check_run_config`
holds the cross-field rules (a phase's seq_len <= model.max_seq_len), run by `load_run_config` (recipe + overrides),
by the trainer, and again when a post-training run takes its model from a checkpoint.

Hand-written rather than OmegaConf/Hydra: the whole need is ~150 lines, and those libraries bring their own override
grammar and error messages that cannot name our flags the way users type them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import signal
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .choices import check_choice, check_choices
from .errors import SlmError, atomic_write_text
from .models import ARCHS, ModelConfig, get_arch, resolve_model_values


Dtype = Literal["float32", "bfloat16", "float16"]  # weight dtypes of an export (`--export.dtype`, `slm export --dtype`)


# A value rule: (predicate over the value, the rule in words). `check_values` applies a {field: rule} table.
def _positive_int(v: Any) -> bool:
    return v > 0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


POSITIVE = (lambda v: _finite(v) and v > 0, "must be a finite number > 0")
NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, "must be a finite number >= 0")
FRACTION = (lambda v: _finite(v) and 0 <= v <= 1, "must be in [0, 1]")
UNIT_OPEN = (lambda v: _finite(v) and 0 <= v < 1, "must be in [0, 1)")
FACTOR = (lambda v: _finite(v) and 0 < v <= 1, "must be in (0, 1]")


def check_values(section: Any, name: str, rules: dict[str, tuple]) -> None:
    """Raise the one-line error for the first field of `section` (`--name.*`) that breaks its rule."""
    for key, (ok, rule) in rules.items():
        value = getattr(section, key)
        try:
            good = bool(ok(value))
        except TypeError:  # a Python caller passed a wrong type
            good = False
        if not good:
            raise SlmError(f"--{name}.{key}={value!r}: {rule}")


@dataclass(kw_only=True)
class SamplingConfig:
    """How `slm.generate` picks each new token."""

    temperature: float = 0.8  # softmax temperature; 0 = greedy (always the most likely token), >1 = more random
    top_k: int = 0  # sample only among the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus sampling: smallest set of tokens whose probability mass >= top_p; 1.0 = off
    repetition_penalty: float = 1.0  # CTRL-style penalty (>1 discourages) for tokens already in prompt or output
    max_new_tokens: int = 256  # generate at most this many tokens per sample (fewer if the context window fills)
    num_samples: int = 1  # independent completions per prompt
    seed: int = 0  # seed of the one torch.Generator used for all draws; same seed + inputs = same samples
    stop_at_eos: bool = True  # end a sample when the tokenizer's end-of-sequence token is drawn (not included)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0.0, "temperature", "must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.repetition_penalty > 0.0, "repetition_penalty", "must be > 0 (1.0 = off)"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.num_samples >= 1, "num_samples", "must be >= 1"),
            (math.isfinite(self.temperature), "temperature", "must be finite"),
            (math.isfinite(self.repetition_penalty), "repetition_penalty", "must be finite"),
            (0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise SlmError(f"--sample.{name} {rule}, got {getattr(self, name)!r}")


@dataclass(kw_only=True)
class RunSection:
    name: str = "run"  # run name; the run directory defaults to runs/<name>
    out_dir: str = ""  # where everything of this run goes; "" = runs/<name>
    seed: int = 1337  # seeds init, data order and sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    overwrite: bool = False  # a fresh run may replace the checkpoints of an earlier run in the same directory

    def __post_init__(self) -> None:
        check_values(self, "run", {"seed": (lambda v: 0 <= v < 2**63, "must be in [0, 2**63)")})
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise SlmError(f"--run.device={self.device!r}: choose auto, cpu, cuda, cuda:N or mps")


@dataclass(kw_only=True)
class TokenizerConfig:
    kind: Literal["bpe", "byte", "pretrained"] = "bpe"  # bpe: trained on the corpus; byte: 256 bytes; pretrained: path=
    path: str = ""  # for kind=pretrained: a tokenizer.json or an HF tokenizer folder (GPT-2, SmolLM2, ...)
    vocab_size: int = 32768  # BPE target size including special tokens (32768 suits real corpora; tiny corpora want less)
    min_frequency: int = 2  # BPE: a pair must occur this often to be merged
    max_train_bytes: int = 0  # BPE: train on at most this many bytes of the corpus (0 = all)
    extra_special_tokens: list[str] = field(default_factory=list)  # appended to <|bos|> <|eos|> <|pad|> and chat tokens

    def __post_init__(self) -> None:
        check_choices(self, "tokenizer")
        check_values(self, "tokenizer", {"vocab_size": (_positive_int, "must be > 0"),
                                         "min_frequency": NON_NEGATIVE, "max_train_bytes": NON_NEGATIVE})
        if self.kind == "pretrained" and not self.path:
            raise SlmError("--tokenizer.path: required when --tokenizer.kind=pretrained (a tokenizer.json or folder)")


@dataclass(kw_only=True)
class DataConfig:
    inputs: list[str] = field(default_factory=list)  # text files, folders, .jsonl/.parquet; "shakespeare" = embedded corpus
    text_column: str = ""  # jsonl/parquet column holding the text; "" = auto-detect
    glob: str = "*"  # which files of a folder to read
    txt_split: Literal["auto", "file", "paragraph", "line"] = "auto"  # what one document of a .txt file is
    on_decode_error: Literal["replace", "skip"] = "replace"  # non-UTF-8 bytes: replace them or skip the doc (counted)
    val_fraction: float = 0.05  # share of documents held out for validation (by document hash, deterministic)
    num_workers: int = 2  # tokenizer worker processes
    prepared_dir: str = ""  # prepared token shards; "" = <run dir>/data
    dedup: bool = True  # drop exact + MinHash near-duplicates, and train docs near-duplicating val (needs datatrove)

    def __post_init__(self) -> None:
        check_choices(self, "data")
        check_values(self, "data", {"val_fraction": UNIT_OPEN, "num_workers": NON_NEGATIVE})


@dataclass(kw_only=True)
class PhaseConfig:
    seq_len: int  # context length of this phase
    steps: int  # optimizer steps in this phase
    batch_size: int = 0  # rows per micro-batch per process; 0 = train.batch_size

    def __post_init__(self) -> None:
        check_values(self, "train.phases[]", {"seq_len": (_positive_int, "must be > 0"),
                                              "steps": (_positive_int, "must be > 0"), "batch_size": NON_NEGATIVE})


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps (ignored when phases are given: their steps add up)
    batch_size: int = 16  # rows per micro-batch per process
    seq_len: int = 256  # context length (ignored when phases are given)
    phases: list[PhaseConfig] = field(default_factory=list)  # curriculum, e.g. 256 -> 1024 -> 2048 (SLMS)
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size * grad_accum * world_size
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon on 2-D hidden weights, AdamW on embeddings, norms, head
    lr: float = 3e-3  # peak learning rate (AdamW part)
    muon_lr: float = 0.02  # peak learning rate of the Muon part
    muon_momentum: float = 0.95  # Muon momentum
    weight_decay: float = 0.1  # decoupled weight decay on 2-D weights (never on norms)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"  # lr after warmup; wsd: warmup-stable-decay
    warmup_steps: int = 50  # linear warmup from 0
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    # bf16: autocast; fp16: autocast + GradScaler (CUDA); bf16-matmul: fp32 with bf16 matmul math (CPU);
    # auto: timed on this machine for CPU runs of >= 1M tokens (slm.train.calibrate), bf16/fp16 on CUDA
    precision: Literal["auto", "fp32", "bf16", "bf16-matmul", "fp16"] = "auto"
    compile: Literal["auto", "true", "false"] = "auto"  # torch.compile the model; auto: timed with precision, CUDA: on
    calibration: str = ""  # set by precision/compile auto: what was chosen and the tok/s it measured (informational)
    activation_checkpointing: bool = False  # recompute blocks in backward to save memory
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"  # ddp or fsdp (FSDP2, sharded); auto: fsdp from 500M params
    loss_chunk: int = 4096  # rows per chunk of the chunked cross-entropy
    eval_every: int = 100  # steps between validation evals (0 = only at the end)
    eval_batches: int = 20  # validation batches per eval (0 = the whole val split)
    sample_every: int = 0  # steps between samples in the log (0 = off)
    checkpoint_every: int = 0  # steps between checkpoints (0 = only the final one)
    keep_last: int = 2  # checkpoints kept besides the best one
    log_every: int = 10  # steps between metric lines
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = number of cores
    keep_freed_memory: bool = True  # CPU + glibc: freed memory stays in the process between steps (slm.train.hostmem)
    tensorboard: bool = True  # write TensorBoard event files
    wandb: bool = False  # log to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "slm"
    resume: str = ""  # checkpoint dir to resume from; "auto" = the latest in the run dir
    init_from: str = ""  # start from this checkpoint's weights (fresh optimizer and step 0): fine-tuning
    max_skipped_steps: int = 20  # abort after this many consecutive non-finite or spiked steps
    # training that heals (slm.train.guard); none of it changes a healthy run's trajectory
    spike_zscore: float = 6.0  # skip a step whose loss is this many std above the running window's mean; 0 = off
    spike_window: int = 100  # losses in the running window of the spike guard
    spike_min_steps: int = 20  # accepted steps before the spike guard judges (the window needs a mean and std)
    check_finite_every: int = 10  # every N steps check that all weights are finite after the update (0 = off)
    rollback_after: int = 5  # reload the last good checkpoint after this many bad steps in a row; 0 = never
    rollback_lr_factor: float = 0.5  # multiply the lr by this at each rollback (1 = keep it)
    rollback_skip_data: bool = True  # after a rollback go on from the current data position (skip the bad window)
    max_rollbacks: int = 3  # abort after this many rollbacks in one process
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # save + exit 128+N; [] = off

    def __post_init__(self) -> None:
        check_choices(self, "train")  # also turns a Python caller's compile=True/False into "true"/"false"
        positive_int = (_positive_int, "must be > 0")
        count = (lambda v: v >= 0, "must be >= 0")
        at_least_2 = (lambda v: v >= 2, "must be >= 2")
        check_values(self, "train", {
            "steps": positive_int, "batch_size": positive_int, "seq_len": positive_int, "grad_accum": positive_int,
            "lr": POSITIVE, "muon_lr": POSITIVE, "muon_momentum": UNIT_OPEN, "weight_decay": NON_NEGATIVE,
            "beta1": UNIT_OPEN, "beta2": UNIT_OPEN, "eps": POSITIVE, "warmup_steps": count,
            "min_lr_ratio": FRACTION, "decay_fraction": FRACTION, "grad_clip": NON_NEGATIVE,
            "loss_chunk": positive_int, "eval_every": count, "eval_batches": count, "sample_every": count,
            "checkpoint_every": count, "keep_last": count, "log_every": count, "num_threads": count,
            "max_skipped_steps": count, "spike_zscore": NON_NEGATIVE, "spike_window": at_least_2,
            "spike_min_steps": at_least_2, "check_finite_every": count,
            "rollback_after": count, "rollback_lr_factor": FACTOR, "max_rollbacks": count,
        })
        for name in self.preempt_signals:
            if name not in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP") or not hasattr(signal, name):
                raise SlmError(f"--train.preempt_signals: {name!r} is not one of SIGTERM, SIGUSR1, SIGUSR2, SIGINT, "
                               f"SIGHUP")

    def phase_list(self) -> list[PhaseConfig]:
        """The curriculum as explicit phases (a single phase when none are configured)."""
        if not self.phases:
            return [PhaseConfig(seq_len=self.seq_len, steps=self.steps, batch_size=self.batch_size)]
        return [PhaseConfig(seq_len=p.seq_len, steps=p.steps, batch_size=p.batch_size or self.batch_size)
                for p in self.phases]

    def total_steps(self) -> int:
        return sum(p.steps for p in self.phase_list())


@dataclass(kw_only=True)
class EvalConfig:
    batch_size: int = 8  # rows per eval batch
    seq_len: int = 0  # 0 = the last training phase's seq_len
    max_batches: int = 0  # 0 = the whole split

    def __post_init__(self) -> None:
        check_values(self, "eval", {"batch_size": (_positive_int, "must be > 0"),
                                    "seq_len": (lambda v: v >= 0, "must be >= 0 (0 = the training seq_len)"),
                                    "max_batches": (lambda v: v >= 0, "must be >= 0 (0 = all)")})


@dataclass(kw_only=True)
class SampleSection(SamplingConfig):
    prompts: list[str] = field(default_factory=lambda: [""])  # prompts for samples in logs and the report


@dataclass(kw_only=True)
class ExportConfig:
    hf: bool = True  # `slm run` exports the final model in HF format to <run dir>/hf
    dtype: Dtype = "float32"  # dtype of the exported weights

    def __post_init__(self) -> None:
        check_choices(self, "export")


@dataclass(kw_only=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: get_arch("llama").config())  # the class of model.arch
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleSection = field(default_factory=SampleSection)
    export: ExportConfig = field(default_factory=ExportConfig)

    def run_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------- #
# dict -> dataclass with type checks


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return check_choice(value, typing.get_args(tp), f"--{where}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SlmError(f"{where}: expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if isinstance(value, (str, int, float)) and item_tp is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SlmError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for alt in args[:-1]:  # the first alternative that takes the value (e.g. str | bool: "auto", or YAML's true)
            try:
                return _coerce(value, alt, where)
            except SlmError:
                pass
        return _coerce(value, args[-1], where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SlmError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SlmError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise SlmError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SlmError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SlmError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types with the dotted key in the message."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            raise SlmError(f"unknown config key '{dotted}'; valid keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without value
        raise SlmError(f"{where or cls.__name__}: {exc}") from None
    except (ArithmeticError, ValueError) as exc:  # a check that cannot even be evaluated (n_heads=0: d_model % 0)
        raise SlmError(f"{where or cls.__name__}: invalid values ({type(exc).__name__}: {exc}); check the sizes"
                       ) from None


# ---------------------------------------------------------------------------------------------------------------- #
# recipes and overrides


def parse_overrides(args: list[str]) -> dict:
    """['--train.lr=3e-4', '--model.preset', 'tiny'] -> {'train': {'lr': 3e-4}, 'model': {'preset': 'tiny'}}."""
    tree: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise SlmError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, raw = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, raw = body, args[i + 1]
            i += 1
        else:
            raise SlmError(f"override {arg!r} has no value; write --{body}=VALUE")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SlmError(f"override --{key}: '{part}' is a value, not a section")
        node[parts[-1]] = value
        i += 1
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"{path}: recipe/config file not found; pass an existing YAML file (see recipes/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" line {line + 1}" if line is not None else ""
        raise SlmError(f"{path}{at}: not valid YAML ({type(exc).__name__}); fix the syntax") from None
    if not isinstance(data, dict):
        raise SlmError(f"{path}: top level must be a mapping of sections (run, data, model, train, ...)")
    return data


def build_run_config(data: dict) -> RunConfig:
    """Dict (recipe + overrides merged) -> RunConfig, applying the model preset under the explicit model keys."""
    data = dict(data)
    model = data.pop("model", None) or {}
    if not isinstance(model, dict):
        raise SlmError(f"model: expected a mapping of model fields, got {type(model).__name__}")
    for key in ("arch", "preset"):  # looked up by name before the section is type-checked
        if model.get(key) is not None and not isinstance(model[key], str):
            raise SlmError(f"model.{key}: expected a name, got {model[key]!r}")
    spec, model = resolve_model_values(model)
    return dataclasses.replace(from_dict(RunConfig, data), model=from_dict(spec.config, model, "model"))


def check_model_values(model: ModelConfig) -> None:
    """Generic range rules of any architecture's config: sizes are never negative, floats are finite."""
    for f in dataclasses.fields(model):
        value = getattr(model, f.name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value < 0:
            raise SlmError(f"--model.{f.name}={value}: must be >= 0")
        if isinstance(value, float) and not math.isfinite(value):
            raise SlmError(f"--model.{f.name}={value}: must be a finite number")


def check_run_config(cfg: RunConfig) -> None:
    """Cross-field rules, checked before any work: every context length fits the model's max_seq_len."""
    check_model_values(cfg.model)
    max_len = getattr(cfg.model, "max_seq_len", 0)
    if max_len:
        for i, phase in enumerate(cfg.train.phase_list()):
            if phase.seq_len > max_len:
                where = f"--train.phases[{i}].seq_len" if cfg.train.phases else "--train.seq_len"
                raise SlmError(f"{where}={phase.seq_len}: longer than the model's max_seq_len={max_len}; lower it or "
                               f"raise --model.max_seq_len")
        if cfg.eval.seq_len > max_len:
            raise SlmError(f"--eval.seq_len={cfg.eval.seq_len}: longer than the model's max_seq_len={max_len}")


def load_run_config(recipe: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """A user's run config: recipe, then overrides; checked as a whole (`check_run_config`) before any work.
    (A checkpoint's saved config is not: its train section does not limit what the model can be used for.)"""
    data = read_yaml(recipe) if recipe else {}
    cfg = build_run_config(_merge(data, parse_overrides(overrides or [])))
    check_run_config(cfg)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_saved_config(path: str | Path) -> RunConfig:
    """Read a config.yaml written by `save_config` (beside a run or inside a checkpoint)."""
    try:
        return build_run_config(read_yaml(path))
    except SlmError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise SlmError(f"{path}: {exc}") from None


def config_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(flag, default, comment) rows for `--help`, taken from the dataclass fields and their source comments."""
    import inspect

    rows = []
    src = ""
    for klass in reversed(cls.__mro__):  # inherited fields (SampleSection <- SamplingConfig) keep their comments
        if dataclasses.is_dataclass(klass):
            try:
                src += inspect.getsource(klass) + "\n"
            except (OSError, TypeError):
                pass
    comments = {}
    for line in src.splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith(("#", "def", "return")):
            comments[stripped.split(":")[0].strip()] = stripped.split("#", 1)[1].strip()
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        name = f"{prefix}{f.name}"
        if tp is ModelConfig:  # the model section: shared fields, then each architecture's own
            rows += config_help(ModelConfig, f"{name}.")
            for spec in ARCHS.values():
                own = [r for r in config_help(spec.config, f"{name}.") if r[0] not in {x[0] for x in rows}]
                rows += [(flag, default, f"[arch={spec.name}] {comment}") for flag, default, comment in own]
            continue
        if dataclasses.is_dataclass(tp):
            rows += config_help(tp, f"{name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        comment = comments.get(f.name, "")
        if typing.get_origin(tp) is Literal:
            comment = f"{{{'|'.join(map(str, typing.get_args(tp)))}}} {comment}".rstrip()
        rows.append((f"--{name}", repr(default), comment))
    return rows
