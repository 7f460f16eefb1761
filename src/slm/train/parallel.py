"""How the training model is laid out over processes: the one place the trainer's parallelism is chosen.

`--train.parallel`: replicated data parallelism (DDP), sharded data parallelism (FSDP2, `fully_shard`), or `auto`
(FSDP2 when the run is distributed and the model has >= AUTO_FSDP_MIN_PARAMS parameters, else DDP). Two calls hide
the choice from the loop: `parallelize` wraps the model (and compiles it when asked), `ParallelModel.micro_batch(last=)`
is the context for one accumulation micro-batch's forward and backward.

Decisions:
- One process or DDP: torch.compile compiles the whole model (one graph: the blocks, the embedding, the final norm
  and the chunked loss fused together). Compiling each block on its own (`CompiledUnits`, "regional compilation")
  made the cold compile of the tiny quickstart model 24-25 s instead of 39-47 s, but its steady-state step was
  slower on the reference config (`bench/step_profile.py --precision bf16 --compile true`, 2 alternating runs:
  non-GEMM 114 vs 96 ms and 134 vs 114 ms per step): the step wins over a run, so the whole graph stays. FSDP
  cannot shard under one graph; it compiles the units (below).
- DDP wraps the compiled module (DDP(compile(model))), and DDP is created only when the run is distributed, so a
  single process trains the bare (or compiled) model with no wrapper in the way.
- `broadcast_buffers=False`: the model's buffers (RoPE tables, causal masks) are constants every rank builds alike, so
  the per-step broadcast would only cost time. `device_ids` is set on CUDA (one device per process) and left out on
  CPU, where the process group is gloo.
- Gradient accumulation all-reduces once per optimizer step: every micro-batch but the last runs under DDP's
  `no_sync`, so grads pile up locally and the last backward averages the sum (FSDP2: `set_requires_gradient_sync`,
  the same idea: one reduce-scatter per optimizer step).
- FSDP2 wraps every `CausalLM.shard_units()` module (the blocks), then the root (embeddings, final norm, head), in
  place: parameters become DTensors sharded on dim 0, so the optimizer is built after `parallelize`. On CUDA with a
  bf16 run the policy is bf16 parameters for compute and fp32 gradient reduction (`MixedPrecisionPolicy`); on CPU
  (gloo) no policy, so CPU FSDP == DDP == one process up to summation order (tested). Activation checkpointing is the
  model's own (non-reentrant `torch.utils.checkpoint` inside each block), which composes with `fully_shard`;
  torch.compile compiles each unit before it is sharded (torchtitan's order: per-block graphs) and the root's loss
  kernel; the compiled units are switched on only inside a micro-batch's forward + backward
  (`ParallelModel.micro_batch`), so evaluation and samples between steps run the same modules eagerly. 0-dim
  parameters (a learned scalar) cannot be sharded: they stay whole on every rank (`ignored_params`) and their grads
  are all-reduced once per step here.
- FSDP with one process has nothing to shard: the model trains unwrapped, but checkpoints stay sharded-format (DCP),
  so a 2-process run resumes on 1 process and back. The trainer logs that choice (`ParallelModel.note`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ContextManager, Iterable

import torch
import torch.distributed as torch_dist

from ..config import TrainConfig
from ..errors import SlmError
from ..models import CausalLM
from ..runtime import DistInfo

# `--train.parallel=auto` shards (FSDP2) from this many parameters up, when the run has > 1 process. Replicated
# training keeps 16 bytes per parameter on every rank (fp32 weights + grads + 2 AdamW moments): 8 GB at 500M, a
# tenth of an 80 GB GPU before activations; below that DDP's single all-reduce is simpler and at least as fast, above
# it sharding's 1/world-size state is what lets the batch (and the model) grow.
AUTO_FSDP_MIN_PARAMS = 500_000_000


@dataclass(frozen=True)
class ParallelModel:
    """The module the loss runs through, and how its gradients synchronise."""

    module: torch.nn.Module  # DDP(model) / the sharded (FSDP2) model / the model itself; compiled when asked
    distributed: bool
    kind: str = "ddp"  # "ddp" or "fsdp" (as resolved)
    sharded: bool = False  # parameters are DTensors sharded over the ranks (fsdp with world size > 1)
    note: str = ""  # how the choice was made, for the run log
    replicated: tuple[torch.nn.Parameter, ...] = ()  # fsdp: scalar parameters kept whole; grads all-reduced here
    compiled: CompiledUnits | None = None  # fsdp: units compiled on their own, active inside `micro_batch`

    @property
    def sharded_checkpoints(self) -> bool:
        """Checkpoints are written with torch.distributed.checkpoint (any fsdp run, also on one process)."""
        return self.kind == "fsdp"

    def micro_batch(self, last: bool) -> ContextManager:
        """Context for one micro-batch's forward + backward: no gradient reduction unless it is the step's last;
        the compiled blocks (if any) run inside it."""
        if self.sharded:
            sync = _fsdp_sync(self.module, last, self.replicated)
        elif self.distributed and not last:
            sync = self.module.no_sync()
        else:
            sync = contextlib.nullcontext()
        if self.compiled is None:
            return sync
        stack = contextlib.ExitStack()
        stack.enter_context(self.compiled.active())
        stack.enter_context(sync)
        return stack


class CompiledUnits:
    """Each of a model's blocks compiled on its own (torch.compile of the module's call, as `nn.Module.compile`
    does), and the root's chunked loss kernel compiled (`CausalLM.compile_loss`), switched on only inside `active()`:
    outside it the same modules run eagerly. Blocks of one class share one dynamo graph (parameters are graph
    inputs), so compiling costs one block's graph, not the model's."""

    def __init__(self, units: Iterable[torch.nn.Module], root: CausalLM):
        self.units, self.root = tuple(units), root
        self.calls = tuple(torch.compile(u._call_impl) for u in self.units)

    @contextlib.contextmanager
    def active(self):
        for unit, call in zip(self.units, self.calls):
            unit._compiled_call_impl = call  # what `nn.Module.compile` sets; `__call__` dispatches on it
        self.root.compile_loss = True
        try:
            yield
        finally:
            for unit in self.units:
                unit._compiled_call_impl = None
            self.root.compile_loss = False


@contextlib.contextmanager
def _fsdp_sync(module: torch.nn.Module, sync: bool, replicated: tuple[torch.nn.Parameter, ...]):
    module.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
    if sync:  # what FSDP does for the sharded ones: average over ranks, once per step
        for p in replicated:
            if p.grad is not None:
                torch_dist.all_reduce(p.grad)
                p.grad.div_(torch_dist.get_world_size())


def resolve_parallel(choice: str, model: CausalLM, dist: DistInfo) -> tuple[str, str]:
    """("ddp" | "fsdp", why) for `--train.parallel=choice` on this model and process layout."""
    if choice != "auto":
        return choice, f"--train.parallel={choice}"
    n = model.num_parameters()
    bound = f"{AUTO_FSDP_MIN_PARAMS / 1e6:,.0f}M"
    if dist.world_size > 1 and n >= AUTO_FSDP_MIN_PARAMS:
        return "fsdp", f"auto: {n / 1e6:,.0f}M parameters >= {bound} on {dist.world_size} processes"
    why = "one process" if dist.world_size == 1 else f"{n / 1e6:,.1f}M parameters < {bound}"
    return "ddp", f"auto: {why}"


def parallelize(model: CausalLM, dist: DistInfo, tc: TrainConfig | None = None,
                autocast_dtype: torch.dtype | None = None) -> ParallelModel:
    """Lay `model` out for the run's processes per `tc.parallel` (and torch.compile it when `tc.compile == "true"`).
    Without `tc`: DDP when distributed, as before, and no compile."""
    compile_ = tc is not None and tc.compile == "true"
    kind, why = resolve_parallel(tc.parallel, model, dist) if tc is not None else ("ddp", "default")
    if kind == "fsdp":
        return _fsdp(model, dist, autocast_dtype, compile_, why)
    module = torch.compile(model) if compile_ else model
    if not dist.enabled:
        return ParallelModel(module, distributed=False, kind="ddp", note=f"ddp ({why}): one process, no wrapper")
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = dist.device
    wrapped = DDP(module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    return ParallelModel(wrapped, distributed=True, kind="ddp", note=f"ddp ({why}) over {dist.world_size} processes")


def _fsdp(model: CausalLM, dist: DistInfo, autocast_dtype: torch.dtype | None, compile_: bool,
          why: str) -> ParallelModel:
    if autocast_dtype == torch.float16:
        raise SlmError("--train.parallel=fsdp with --train.precision=fp16: the GradScaler does not shard; use "
                       "--train.precision=bf16")
    if not dist.enabled or not torch_dist.is_initialized():
        module = torch.compile(model) if compile_ else model
        return ParallelModel(module, distributed=False, kind="fsdp",
                             note=f"fsdp ({why}) with world size 1: nothing to shard, training the whole model on one "
                                  f"process; checkpoints are sharded-format (DCP) all the same")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if dist.device.type == "cuda" and autocast_dtype == torch.bfloat16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = model.shard_units()
    scalars = {p for p in model.parameters() if p.dim() == 0}  # fully_shard cannot shard a 0-dim tensor: kept whole
    compiled = CompiledUnits(units, model) if compile_ else None  # before sharding (torchtitan's order)
    for unit in units:
        fully_shard(unit, mp_policy=policy, ignored_params=scalars & set(unit.parameters()) or None)
    fully_shard(model, mp_policy=policy, ignored_params=scalars or None)
    return ParallelModel(model, distributed=True, kind="fsdp", sharded=True, replicated=tuple(scalars),
                         compiled=compiled,
                         note=f"fsdp ({why}): {len(units)} units + root sharded over {dist.world_size} processes")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly DTensor) tensor."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float, sharded: bool) -> float:
    """Clip the global grad norm to `max_norm` (inf = only measure) and return it. Replicated layouts use
    torch.nn.utils.clip_grad_norm_ as is; a sharded one may mix DTensor shards and whole (scalar) tensors, which torch
    cannot stack into one norm, so each kind is normed apart (the DTensor part reduced over the shards) and combined,
    with torch's formula: grads *= min(1, max_norm / (norm + 1e-6))."""
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    parts = [[g for g in grads if isinstance(g, DTensor)], [g for g in grads if not isinstance(g, DTensor)]]
    total = math.sqrt(sum(float(full_value(torch.nn.utils.get_total_norm(part))) ** 2 for part in parts if part))
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a (possibly DTensor) tensor, e.g. a grad norm reduced over shards."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def all_finite(tensors: Iterable[torch.Tensor], dist: DistInfo, sharded: bool) -> bool:
    """Every element of every tensor finite: one fused norm per (local) tensor; agreed over ranks when sharded."""
    parts = [local(t) for t in tensors]
    parts = [t for t in parts if t.numel() and t.is_floating_point()]
    ok = bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(parts)])).all()) if parts else True
    if sharded and dist.enabled:
        flag = torch.tensor(0.0 if ok else 1.0, device=dist.device)
        torch_dist.all_reduce(flag)
        ok = flag.item() == 0.0
    return ok


def sharded_state(model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """The DCP state dict of a run: {"model": {fqn: tensor}, "optim": {name: optimizer state keyed by fqn}}. Under
    FSDP2 the tensors are DTensor shards, else whole tensors; keys are parameter names either way, so DCP reshards
    between world sizes (and between a sharded run and a single process). An optimizer with no state yet (before its
    first step) gets it initialised, so the dict can also be the template a load fills in."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model),
            "optim": {name: get_optimizer_state_dict(model, opt) for name, opt in optimizers.items()}}


def load_sharded_state(model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], path) -> None:
    """Collective: read a sharded checkpoint's `dcp/` into `model` and `optimizers` (resharding as needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from ..checkpoint import SHARDED_DIR, single_process_dcp

    state = sharded_state(model, optimizers)
    with single_process_dcp():
        dcp.load(state, checkpoint_id=path / SHARDED_DIR, no_dist=not torch_dist.is_initialized())
    set_model_state_dict(model, state["model"])
    for name, opt in optimizers.items():
        set_optimizer_state_dict(model, opt, state["optim"][name])
