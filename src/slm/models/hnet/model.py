"""H-Net-Bit: byte-level dynamic chunking (H-Net) with HGRN-Bit stages (Simplified SLM's hierarchical model).

Stage s (width D), on a sequence of T inputs (bytes, or the chunks of stage s - 1):
    h = Encoder(x)                                            HGRN-Bit blocks + RMSNorm
    p_t = (1 - cos(W_q h_{t-1}, W_k h_t)) / 2, p = 1 at a row's (or document's) first input      the router
    b_t = p_t > 0.5                                           boundaries; the chunks are the inputs with b_t = 1
    z = Inner([h_t : b_t] ++ pad)[..., :D]                    stage s + 1, or the main stack, on the chunks
    z̄_j = P_j z_j + (1 - P_j) z̄_{j-1}                        dechunking EMA over chunks (P_j = p at chunk j)
    y_t = z̄_{c(t)} * STE(b_t ? p_t : 1 - p_t) + W_res h_t    c(t) = chunks up to t; STE = 1 forward, identity backward
    out = Decoder(y)
and the ratio loss of stage s, L = N/(N-1) ((N-1) F G + (1-F)(1-G)) with F the fraction of boundaries, G the mean p
and N the stage's target ratio (`target_ratios`), weighted by `ratio_loss_weight`; it is 1 at F = G = 1/N.

Decisions:
- No lookahead: b_t reads h_{t-1} and h_t only, chunk j is known at its first input, and y_t reads chunks up to t.
  The registry's no-future-leak and state-decode invariants hold, and tests/models/test_hnet.py checks it per stage.
- Batched training gathers each row's chunks to the front of a (B, M) buffer, M the largest chunk count; the rest is
  masked (identity steps of every recurrence), so rows chunk independently and nothing ever crosses rows. While
  exporting (ONNX) M is T, since reading the largest count is a host sync; the gather order is a scatter by running
  counts (no stable sort or cummax in ONNX), so the exported prefill computes the same function.
- Decoding carries, per stage, the last encoder output (the router's h_{t-1}), whether the row has started, and
  z̄; the inner stage steps with mask b_t, so a row without a boundary at this byte leaves its inner states as they
  were. Rows may disagree on boundaries at every step (Simplified SLM's cache crashed on exactly that), the step has
  static shapes and reads no host value (torch.export traces it).
- Packed documents: a document start forces p = 1 (a boundary with P = 1, which also restarts z̄) and resets every
  recurrence, so packed rows equal separate forwards (`supports_packing`).
- The ratio loss is averaged per row (F, G per sequence), so it is a per-row mean like the token loss and gradient
  accumulation leaves it unchanged. Logged: `aux_ratio_<s>` (the weighted loss), `chunk_ratio_<s>` (inputs per
  chunk, 1/F, the compression of stage s) and `chunk_ratio` (bytes per innermost chunk).
- Routers and the residual projection are full precision (fp32 cosine, even under autocast), initialised to the
  identity and to zero as in H-Net; everything else is BitLinear, except the Q, K, V, O of the optional innermost
  sliding-window attention layers (`main_pattern` letter `a`, slm.models.hnet.attention), fp as in Simplified SLM.
  Those keep a per-row ring of their last `attn_window` chunks' keys, written only at a row's boundaries.
- Training FLOPs count every stage at the byte rate (the registry's upper bound); inner stages really see 1/N.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hgrn_bit.conv import front_dest
from ..hgrn_bit.model import HGRNBlock, RecurrentLM, Stack
from ..hgrn_bit.state import RecurrentState
from ..layers.scan import linear_scan
from .attention import AttentionBlock
from .config import HNetConfig


def ratio_loss(b: torch.Tensor, p: torch.Tensor, valid: torch.Tensor, n: float) -> torch.Tensor:
    """H-Net's load-balancing loss per row, averaged: b, p, valid (B, T) -> scalar (1 at F = G = 1/n)."""
    count = valid.sum(dim=1).clamp_min(1)
    frac = (b & valid).sum(dim=1) / count  # F: fraction of inputs that start a chunk (no gradient)
    mean_p = (p * valid).sum(dim=1) / count  # G: mean boundary probability
    return (n / (n - 1) * ((n - 1) * frac * mean_p + (1 - frac) * (1 - mean_p))).mean()


def _ste_one(c: torch.Tensor) -> torch.Tensor:
    """1 in the forward pass, the gradient of c in the backward pass."""
    return c - c.detach() + 1.0


def _stack(cfg: HNetConfig, d: int, kinds: str) -> Stack:
    """A stack of width d with one block per letter of `kinds` (x: HGRN-Bit, a: sliding-window attention)."""
    def block(kind: str) -> nn.Module:
        if kind == "a":
            return AttentionBlock(d, cfg.hidden(d), cfg.norm_eps, cfg.attn_heads, cfg.attn_window, cfg.rope_theta)
        return HGRNBlock(d, cfg.hidden(d), cfg.norm_eps, cfg.conv_spec())

    return Stack([block(kind) for kind in kinds], d, cfg.norm_eps)



def _linear_fp32(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The router's projection in fp32 even when the model's weights were cast to bf16 for decoding (`slm generate`)."""
    bias = None if linear.bias is None else linear.bias.float()
    return F.linear(x.float(), linear.weight.float(), bias)

def _latest_true(real: torch.Tensor) -> torch.Tensor:
    """real (B, T) bool -> (B, T) long: the index of the latest True at or before t, -1 before the first. A running
    max written as a scatter (slot k: index of the k-th True) and a gather by the running count, since ONNX has no
    cummax."""
    B, T = real.shape
    count = real.long().cumsum(dim=1)  # (B, T) Trues up to t: the latest is the count-th
    pos = torch.arange(T, device=real.device).expand(B, T)
    table = torch.full((B, T + 1), -1, dtype=torch.long, device=real.device)  # slot 0: no True yet
    table = table.scatter(1, torch.where(real, count, 0), torch.where(real, pos, -1))  # non-real rewrite slot 0's -1
    return table.gather(1, count)


def _boundaries_first(b: torch.Tensor) -> torch.Tensor:
    """b (B, T) bool -> (B, T) long: the positions with b first, then the others, each in order (a stable argsort of
    ~b, written as one scatter of a permutation: ONNX has no stable sort)."""
    B, T = b.shape
    pos = torch.arange(T, device=b.device).expand(B, T)
    return torch.empty_like(pos).scatter(1, front_dest(b), pos)


class ChunkStage(nn.Module):
    """Encoder -> router/chunker -> inner -> dechunker -> decoder at one width (module docstring)."""

    def __init__(self, cfg: HNetConfig, s: int) -> None:
        super().__init__()
        d, d_in = cfg.widths[s], cfg.widths[s + 1]
        self.d, self.target = d, cfg.target_ratios[s]
        self.encoder = _stack(cfg, d, "x" * cfg.encoder_layers[s])
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.pad = nn.Parameter(torch.zeros(d_in - d)) if d_in > d else None
        self.inner: nn.Module = (ChunkStage(cfg, s + 1) if s + 1 < cfg.n_stages
                                 else _stack(cfg, d_in, cfg.main_pattern))
        self.residual = nn.Linear(d, d, bias=False)
        self.decoder = _stack(cfg, d, "x" * cfg.decoder_layers[s])
        self.slots: list[int] = []  # prev_h, started, zbar (assigned by the model)
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (b, p, valid) of the last pass

    def state_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((self.d,), torch.float32), ((), torch.bool), ((self.d,), torch.float32)]

    def reset_special(self) -> None:
        with torch.no_grad():
            for lin in (self.q_proj, self.k_proj):
                lin.weight.copy_(torch.eye(self.d))
            self.residual.weight.zero_()
            if self.pad is not None:
                self.pad.zero_()

    def _boundary_prob(self, prev: torch.Tensor, h: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        """prev, h (..., D), has_prev (...) bool -> p (...) fp32, 1 where there is no previous input."""
        if torch.is_autocast_enabled(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                return self._boundary_prob(prev.float(), h.float(), has_prev)
        q = F.normalize(_linear_fp32(self.q_proj, prev), dim=-1)
        k = F.normalize(_linear_fp32(self.k_proj, h), dim=-1)
        p = ((1 - (q * k).sum(-1)) / 2).clamp(0.0, 1.0)
        return torch.where(has_prev, p, torch.ones_like(p))

    def _widen(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return torch.cat([x, self.pad.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        """x (B, T, D); valid (B, T) bool or None (all real); reset (B, T) bool (document starts) or None."""
        B, T, D = x.shape
        h = self.encoder(x, valid, reset, state)  # (B, T, D)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if valid is None else valid
        last_real = _latest_true(real)  # (B, T) latest real input <= t
        prev_idx = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], dim=1)  # latest real < t
        prev0 = state.get(self.slots[0]).to(h.dtype) if state is not None else h.new_zeros(B, D)
        started0 = state.get(self.slots[1]) if state is not None else torch.zeros(B, dtype=torch.bool,
                                                                                  device=x.device)
        prev = torch.where((prev_idx >= 0)[..., None], h.gather(1, prev_idx.clamp_min(0)[..., None].expand(B, T, D)),
                           prev0[:, None])
        has_prev = (prev_idx >= 0) | started0[:, None]
        if reset is not None:
            has_prev = has_prev & ~reset
        p = self._boundary_prob(prev, h, has_prev)  # (B, T) fp32
        b = (p > 0.5) & real
        if self.training and state is None:
            self.last = (b, p, real)

        # chunk: each row's boundary inputs, in order, at the front of (B, M)
        counts = b.sum(dim=1)  # (B,)
        # the largest chunk count is a host read; an export (symbolic T) takes its bound T, the extra slots masked
        M = T if torch.compiler.is_exporting() else int(counts.max())
        zbar0 = state.get(self.slots[2]) if state is not None else h.new_zeros(B, D, dtype=torch.float32)
        if M > 0:
            order = _boundaries_first(b)[:, :M]  # (B, M) boundary positions
            chunk_valid = torch.arange(M, device=x.device)[None] < counts[:, None]  # (B, M)
            chunks = h.gather(1, order[..., None].expand(B, M, D))
            chunk_reset = None if reset is None else reset.gather(1, order) & chunk_valid
            z = self.inner(self._widen(chunks), chunk_valid, chunk_reset, state)[..., :D]  # (B, M, D)
            P = p.gather(1, order)[..., None]  # (B, M, 1)
            keep = chunk_valid[..., None]
            zbar = linear_scan(torch.where(keep, 1 - P, 1.0).expand(B, M, D),
                               torch.where(keep, P * z.float(), 0.0), zbar0,
                               max_len=None if state is None else state.max_len)  # (B, M, D) dechunking EMA
            j = b.long().cumsum(dim=1) - 1  # (B, T) chunk of each input (-1: before this call's first chunk)
            y = torch.where((j >= 0)[..., None], zbar.gather(1, j.clamp_min(0)[..., None].expand(B, T, D)),
                            zbar0[:, None])
            zbar_last = zbar[:, -1]
        else:  # no boundary anywhere in this call (a continuation): every input reads the carried z̄
            y, zbar_last = zbar0[:, None].expand(B, T, D), zbar0
        y = y * _ste_one(torch.where(b, p, 1 - p))[..., None]
        if state is not None:
            last = last_real[:, -1]  # (B,)
            h_last = h.gather(1, last.clamp_min(0)[:, None, None].expand(B, 1, D))[:, 0]
            state.set(self.slots[0], torch.where((last >= 0)[:, None], h_last, prev0))
            state.set(self.slots[1], started0 | real.any(dim=1))
            state.set(self.slots[2], zbar_last)
        out = y.to(h.dtype) + self.residual(h)
        return self.decoder(out, valid, reset, state)

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """x (B, 1, D), real (B,) bool -> (B, 1, D). The inner stage steps only for rows with a boundary."""
        h = self.encoder.step(x, real, state)  # (B, 1, D)
        prev, started, zbar0 = (state.get(i) for i in self.slots)
        p = self._boundary_prob(prev.to(h.dtype), h[:, 0], started)  # (B,)
        b = (p > 0.5) & real
        z = self.inner.step(self._widen(h), b, state)[:, 0, :self.d]  # (B, D)
        P = p[:, None]
        zbar = torch.where(b[:, None], torch.addcmul(P * z.float(), 1 - P, zbar0), zbar0)
        state.set(self.slots[0], torch.where(real[:, None], h[:, 0].float(), prev))
        state.set(self.slots[1], started | real)
        state.set(self.slots[2], zbar)
        y = zbar[:, None] * _ste_one(torch.where(b, p, 1 - p))[:, None, None]
        out = y.to(h.dtype) + self.residual(h)
        return self.decoder.step(out, real, state)


class HNetBit(RecurrentLM):
    """Byte embedding -> ChunkStage(0) (nesting the inner stages) -> BitLinear head."""

    cfg: HNetConfig

    def __init__(self, cfg: HNetConfig) -> None:
        super().__init__(cfg)
        self._build_io(cfg.widths[0], cfg.norm_eps)
        self.trunk = ChunkStage(cfg, 0)
        self._finish_init()

    def stages(self) -> list[ChunkStage]:
        out, stage = [], self.trunk
        while isinstance(stage, ChunkStage):
            out.append(stage)
            stage = stage.inner
        return out

    def reset_special_parameters(self) -> None:
        for stage in self.stages():
            stage.reset_special()

    def residual_outputs(self) -> tuple[str, ...]:
        return ("o_proj.weight", "down_proj.weight")

    def flops_per_token(self, seq_len: int) -> float:
        """The registry's 6 * matmul weights, plus 12 d per key each `a` layer's query sees (min(t + 1, window),
        averaged over the sequence), at the byte rate like the rest."""
        c = self.cfg
        w = min(c.attn_window, seq_len)
        keys = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
        return super().flops_per_token(seq_len) + c.main_pattern.count("a") * 12 * c.widths[-1] * keys

    def _set_checkpointing(self) -> None:
        for module in self.modules():
            if isinstance(module, Stack):
                module.gradient_checkpointing = self.gradient_checkpointing

    def hidden_states(self, input_ids: torch.Tensor, *, state: RecurrentState | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        valid, reset = self._trunk_flags(input_ids, state, attention_mask, doc_ids, position_ids)
        self._set_checkpointing()
        x = self.trunk(self.embed_tokens(input_ids), valid, reset, state)
        return self.head_input(x)

    def hidden_step(self, input_ids: torch.Tensor, state: RecurrentState, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head_input(self.trunk.step(self.embed_tokens(input_ids), attention_mask[:, 0], state))

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """The weighted ratio loss of each stage of the last training forward."""
        if not self.training or self.cfg.ratio_loss_weight == 0:
            return {}
        out = {}
        for s, stage in enumerate(self.stages()):
            if stage.last is not None:
                b, p, real = stage.last
                out[f"ratio_{s}"] = self.cfg.ratio_loss_weight * ratio_loss(b, p, real, stage.target)
        return out

    def step_metrics(self) -> dict[str, float]:
        """Inputs per chunk of each stage (its compression), last training forward."""
        out = {}
        for s, stage in enumerate(self.stages()):
            if stage.last is not None:
                b, _, real = stage.last
                out[f"chunk_ratio_{s}"] = float(real.sum()) / max(float(b.sum()), 1.0)
        if out:  # bytes per innermost chunk: the product over stages
            out["chunk_ratio"] = float(torch.tensor(list(out.values())).prod())
        return out
