"""HGRN-Bit: the MatMul-free LM block (HGRN token mixer + SwiGLU, every projection a ternary BitLinear) and the flat
byte-level model of Simplified SLM.

Token mixer, per channel (no heads, expand ratio 1, as Simplified SLM's configs):
    f_t = sigmoid(W_f x_t),  i_t = SiLU(W_i x_t) * (1 - f_t),  h_t = f_t * h_{t-1} + i_t,
    o_t = W_o [RMSNorm(W_g x_t) * SiLU(h_t)]

Decisions:
- Training runs the recurrence as an associative scan (slm.models.layers.scan), never a loop over time;
  decoding carries h per row and per layer (slm.models.hgrn_bit.state). One code path handles left padding,
  masked rows and packed documents: a masked position is the identity step (f = 1, i = 0: h passes through
  unchanged), a document start is a reset (f = 0: h forgets the previous document). So packed rows are exact
  (`supports_packing`) and a padded or finished row never disturbs its state.
- The recurrence is fp32 even under bf16 autocast: h accumulates over the whole context.
- An optional short convolution before the gates (`use_short_conv`, off by default as in Simplified SLM's
  @6f12bce configs; slm.models.hgrn_bit.conv), with the same masking, reset and per-row state rules as h. No HGRN
  lower bound on the forget gate (their flag for it is dead code).
- The head is a BitLinear (ternary weights, 8-bit inputs) when untied, as in Simplified SLM: `hidden_states` returns
  the head's quantized input and `output_weight` its ternary weight (both straight-through), so the shared chunked
  cross-entropy computes exactly the BitLinear head. Tied, the head is the fp embedding.
- Simplified SLM shifted the labels twice (every reported loss was for byte t+2); here the loader shifts once and
  the model never shifts (tested by the registry invariants).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..base import CausalLM, Role
from ..layers.bitlinear import BitLinear
from ..layers.norm import RMSNorm
from ..layers.scan import linear_scan
from .config import HGRNBitConfig
from .conv import ConvSpec, ShortConv
from .state import RecurrentState

ConvCall = Callable[[ShortConv, torch.Tensor], torch.Tensor]  # runs a mixer's short conv (forward or decode step)


class HGRNMixer(nn.Module):
    """The HGRN-Bit token mixer (module docstring). Owns one state slot: h (B, C) fp32."""

    def __init__(self, d: int, eps: float, conv: ConvSpec | None = None) -> None:
        super().__init__()
        self.i_proj, self.f_proj, self.g_proj = BitLinear(d, d, eps), BitLinear(d, d, eps), BitLinear(d, d, eps)
        self.g_norm = RMSNorm(d, eps)
        self.o_proj = BitLinear(d, d, eps)
        self.slot = -1  # index of h in the RecurrentState (set by the model)
        # optional short convolution (slm.models.hgrn_bit.conv): on the input that i, f, g read, or on i and f
        shared, split = conv is not None and conv.shared, conv is not None and not conv.shared
        self.h_conv = ShortConv(d, conv.kernel, conv.bias) if shared else None
        self.i_conv = ShortConv(d, conv.kernel, conv.bias) if split else None
        self.f_conv = ShortConv(d, conv.kernel, conv.bias) if split else None

    def _gates(self, x: torch.Tensor, conv: ConvCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (what g reads, f, i); `conv(module, tensor)` runs a short conv as a forward or a step."""
        if self.h_conv is not None:
            x = conv(self.h_conv, x)  # MatMul-free LM's shared kernel: g reads the convolved input too
        i_in, f_in = self.i_proj(x), self.f_proj(x)
        if self.i_conv is not None:
            i_in, f_in = conv(self.i_conv, i_in), conv(self.f_conv, f_in)
        f = torch.sigmoid(f_in.float())
        i = F.silu(i_in.float()) * (1 - f)
        return x, f, i

    def _out(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.g_norm(self.g_proj(x)) * F.silu(h).to(x.dtype))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        """x (B, T, C); valid (B, T) bool (False = identity step) or None; reset (B, T) bool (document starts)."""
        x, f, i = self._gates(x, lambda m, t: m(t, valid, reset, state))  # f, i (B, T, C) fp32
        if reset is not None:
            f = f.masked_fill(reset[..., None], 0.0)
        if valid is not None:
            f = torch.where(valid[..., None], f, 1.0)
            i = torch.where(valid[..., None], i, 0.0)
        h0, max_len = (None, None) if state is None else (state.get(self.slot), state.max_len)
        h = linear_scan(f, i, h0, max_len=max_len)  # (B, T, C); max_len bounds T while exporting
        if state is not None:
            state.set(self.slot, h[:, -1])  # masked steps are identities, so the last column is each row's state
        return self._out(x, h)

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """x (B, 1, C), real (B,) bool -> (B, 1, C); rows with real False keep their h."""
        x, f, i = self._gates(x, lambda m, t: m.step(t, real, state))
        f, i = f[:, 0], i[:, 0]  # (B, C)
        h_old = state.get(self.slot)
        h = torch.where(real[:, None], torch.addcmul(i, f, h_old), h_old)
        state.set(self.slot, h)
        return self._out(x, h[:, None])


class BitMLP(nn.Module):
    """SwiGLU with ternary projections: [g, u] = W_gu x, y = W_down(SiLU(g) * u)."""

    def __init__(self, d: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up_proj = BitLinear(d, 2 * hidden, eps)
        self.down_proj = BitLinear(hidden, d, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up_proj(x).split(self.hidden, dim=-1)
        return self.down_proj(F.silu(g) * u)


class MixerBlock(nn.Module):
    """x + mixer(RMSNorm(x)), then x + BitMLP(RMSNorm(x)). The mixer (HGRN, or H-Net's window attention) has
    forward(x, valid, reset, state) and step(x, real, state)."""

    def __init__(self, mixer: nn.Module, d: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d, eps)
        self.attn = mixer
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = BitMLP(d, hidden, eps)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), valid, reset, state)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        x = x + self.attn.step(self.attn_norm(x), real, state)
        return x + self.mlp(self.mlp_norm(x))


class HGRNBlock(MixerBlock):
    def __init__(self, d: int, hidden: int, eps: float, conv: ConvSpec | None = None) -> None:
        super().__init__(HGRNMixer(d, eps, conv), d, hidden, eps)


class Stack(nn.Module):
    """Blocks of one width followed by an RMSNorm (a flat model's trunk; an H-Net encoder, decoder or main stage)."""

    def __init__(self, blocks: list[nn.Module], d: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(d, eps)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and state is None:
                x = checkpoint(layer, x, valid, reset, None, use_reentrant=False)
            else:
                x = layer(x, valid, reset, state)
        return self.norm(x)

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x, real, state)
        return self.norm(x)


def assign_slots(model: nn.Module, specs: list[tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Give every module with a `state_specs()` method its slots in the RecurrentState, in module order."""
    for module in model.modules():
        if isinstance(module, HGRNMixer):
            module.slot = len(specs)
            specs.append(((module.o_proj.in_features,), torch.float32))
        elif hasattr(module, "state_specs"):
            module.slots = list(range(len(specs), len(specs) + len(module.state_specs())))
            specs.extend(module.state_specs())


class RecurrentLM(CausalLM):
    """What the flat HGRN-Bit model and H-Net share: byte embedding, a trunk, the (Bit)Linear head, the recurrent
    state, init and parameter roles. Subclasses build `self.trunk` and call `_finish_init`."""

    def _build_io(self, d: int, eps: float) -> None:
        c = self.cfg
        self.embed_tokens = nn.Embedding(c.vocab_size, d)
        self.lm_head = None if c.tie_embeddings else BitLinear(d, c.vocab_size, eps)

    def _finish_init(self) -> None:
        self._state_specs: list[tuple[tuple[int, ...], torch.dtype]] = []
        assign_slots(self, self._state_specs)
        self.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, d) head matrix: the BitLinear head's ternary weight (straight-through), or the tied embedding."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.quantized_weight()

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's normalised output as the head sees it (the BitLinear head's own norm + 8-bit quantization)."""
        return x if self.lm_head is None else self.lm_head.quantized_input(x)

    def param_roles(self) -> dict[str, Role]:
        roles = super().param_roles()
        if self.lm_head is not None:
            roles["lm_head.weight"] = "output"
        for name, module in self.named_modules():
            if isinstance(module, ShortConv):  # per-channel taps, not a matrix: no decay, never Muon
                roles[f"{name}.weight"] = "gain"
                if module.bias is not None:
                    roles[f"{name}.bias"] = "bias"
        return roles

    def residual_outputs(self) -> tuple[str, ...]:
        """Parameter name suffixes of projections that write into the residual stream (init scaled down)."""
        return ("o_proj.weight", "down_proj.weight")

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.init_std
        scaled = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(self.residual_outputs()):
                nn.init.normal_(p, 0.0, scaled, generator=gen)
            else:
                nn.init.normal_(p, 0.0, std, generator=gen)
        for module in self.modules():
            if isinstance(module, ShortConv):
                module.reset_parameters(gen)
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """Architecture-specific init after the generic one (H-Net: identity routers, zero residual)."""

    def new_state(self, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> RecurrentState:
        # The recurrences stay fp32 whatever the model dtype (they accumulate over the whole context).
        return RecurrentState.new(self._state_specs, batch_size, max_len, device=device)

    def state_from_tensors(self, tensors: tuple[torch.Tensor, ...]) -> RecurrentState:
        return RecurrentState(list(tensors), max_len=self.cfg.max_seq_len, functional=True)

    def _trunk_flags(self, input_ids: torch.Tensor, state: RecurrentState | None,
                     attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None,
                     position_ids: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(valid, reset) of a sequence call: left padding with a state, document starts when packed."""
        valid = None
        if state is not None and attention_mask is not None:
            valid = attention_mask.bool()
        reset = None
        if doc_ids is not None:
            reset = position_ids == 0  # packed rows: positions restart at 0 in each document
        return valid, reset


class HGRNBit(RecurrentLM):
    """The flat model: byte embedding -> n_layers HGRN-Bit blocks -> RMSNorm -> BitLinear head."""

    cfg: HGRNBitConfig

    def __init__(self, cfg: HGRNBitConfig) -> None:
        super().__init__(cfg)
        d = cfg.d_model
        self._build_io(d, cfg.norm_eps)
        blocks = [HGRNBlock(d, cfg.hidden(d), cfg.norm_eps, cfg.conv_spec()) for _ in range(cfg.n_layers)]
        self.trunk = Stack(blocks, d, cfg.norm_eps)
        self._finish_init()

    def hidden_states(self, input_ids: torch.Tensor, *, state: RecurrentState | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        valid, reset = self._trunk_flags(input_ids, state, attention_mask, doc_ids, position_ids)
        self.trunk.gradient_checkpointing = self.gradient_checkpointing
        x = self.trunk(self.embed_tokens(input_ids), valid, reset, state)  # (B, T, C)
        return self.head_input(x)

    def hidden_step(self, input_ids: torch.Tensor, state: RecurrentState, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.trunk.step(self.embed_tokens(input_ids), attention_mask[:, 0], state)  # (B, 1, C)
        return self.head_input(x)
