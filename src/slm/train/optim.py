"""Optimizers: AdamW, or Muon for 2-D hidden weights with AdamW for the rest.

Parameters are grouped by the role the model gives them (`CausalLM.param_roles()`), never by name, so every
architecture gets the same treatment. Muon (torch.optim.Muon, orthogonalised momentum) only suits matrices acting on
hidden states (roles `matrix`, `expert`); embeddings, the output head and norm gains go to AdamW, as Keller Jordan's
recipe and SLMS do. The two optimizers sit behind one small object
with the torch optimizer interface the trainer uses (step, zero_grad, param_groups, state_dict), so the loop does not
branch on the choice. Every param group records its peak lr in "peak_lr"; the schedule multiplies it each step.
Weight decay applies to matrix roles only — never to gains, biases or scalars.

Under FSDP2 (`--train.parallel=fsdp`) a parameter is a DTensor holding this rank's rows. AdamW is elementwise and
runs on the shards as is. Muon orthogonalises the whole matrix, so `ShardedMuon` gathers: the momentum buffer stays
sharded (its update is elementwise), the Nesterov update is all-gathered to the full matrix (`full_tensor()`),
Newton-Schulz runs on it on every rank (identical inputs, identical results), and each rank keeps its own rows of the
result. That costs one all-gather per matrix per step and the full-matrix compute on every rank — simple and exactly
torch.optim.Muon's math (tested against it); a sharded Newton-Schulz would save that compute at large scale.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..models import DECAYED_ROLES, HIDDEN_MATRIX_ROLES, CausalLM


def _adamw(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused kernels exist for CUDA and CPU in torch >= 2.4; they are faster and deterministic.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


class OptimizerSet:
    """One or two torch optimizers presented as one."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def set_lr_multiplier(self, mult: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["peak_lr"] * mult

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run uses {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class ShardedMuon(torch.optim.Muon):
    """torch.optim.Muon that also takes FSDP2-sharded (DTensor) matrices: gather, orthogonalise, keep the local rows
    (module docstring). Plain tensors go through torch's own step unchanged."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        from torch.distributed.tensor import DTensor

        if not any(isinstance(p, DTensor) for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        from torch.distributed.tensor import distribute_tensor
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # elementwise: on the shards
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                full = update.full_tensor() if isinstance(update, DTensor) else update  # (out, in) whole matrix
                ortho = _zeropower_via_newtonschulz(full, group["ns_coefficients"], group["ns_steps"], group["eps"])
                if isinstance(p, DTensor):  # every rank holds the same `ortho`: keep this rank's rows, no traffic
                    ortho = distribute_tensor(ortho, p.device_mesh, p.placements, src_data_rank=None)
                p.mul_(1 - lr * wd)
                p.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def build_optimizer(model: CausalLM, cfg: TrainConfig) -> OptimizerSet:
    device = next(model.parameters()).device
    roles = model.param_roles()
    decay, no_decay, hidden_2d = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = roles[name]
        if cfg.optimizer == "muon" and role in HIDDEN_MATRIX_ROLES and p.dim() == 2:
            hidden_2d.append(p)
        elif role in DECAYED_ROLES:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [g for g in (
        {"params": decay, "weight_decay": cfg.weight_decay, "peak_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "peak_lr": cfg.lr},
    ) if g["params"]]
    optimizers: dict[str, torch.optim.Optimizer] = {"adamw": _adamw(groups, cfg, device)}
    if hidden_2d:
        optimizers["muon"] = ShardedMuon(
            [{"params": hidden_2d, "peak_lr": cfg.muon_lr}], lr=cfg.muon_lr, weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum, nesterov=True)
    return OptimizerSet(optimizers)
