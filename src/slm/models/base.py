"""The model contract every architecture implements, and the parts they share.

A `CausalLM` maps token ids to next-token logits and owns everything about itself that the rest of slm would
otherwise have to know by name:
- `forward(input_ids, targets=...)`: logits, final hidden states, or the summed next-token loss through the chunked
  cross-entropy (never materialising (B, T, vocab) fp32 logits). The dispatch lives here, once; an architecture
  writes `hidden_states` (a whole sequence) and `hidden_step` (one token per row against its decode state).
- `new_state(batch, max_len, dtype, device)`: its decode state (a KV cache, a ring buffer, a recurrent state), so
  the decode engine never builds one itself. `decode_step(ids, mask, state_tensors)` is the same step as a pure
  function of tensors, which ONNX / Core ML exporters trace.
- `param_roles()`: what each parameter is (embedding, output head, hidden matrix, gain, ...). The optimizer groups by
  role, never by parameter name.
- `flops_per_token(seq_len)` for MFU, `num_parameters()`, and `aux_losses()` (e.g. an MoE balance loss) that the
  trainer adds to the task's loss.
Packed documents (`doc_ids`, `position_ids`) are masked apart by `document_causal_mask`; architectures that can do
that say so with the `supports_packing` flag of their registry entry.

This module knows nothing about tokenizers, data or training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers.loss import chunked_cross_entropy

Role = Literal["embedding", "output", "matrix", "expert", "gain", "bias", "scalar"]
# Roles whose parameters are dense matrices acting on hidden states: Muon's domain. Expert tables (e.g. Doge's rank-1
# experts, one row per expert) are not one linear map, so orthogonalising a whole table would mix experts: AdamW.
HIDDEN_MATRIX_ROLES: frozenset[str] = frozenset({"matrix"})
# Roles that get decoupled weight decay (matrices of any kind; never gains, biases or scalars).
DECAYED_ROLES: frozenset[str] = frozenset({"embedding", "output", "matrix", "expert"})


@dataclass(kw_only=True)
class ModelConfig:
    """Fields every architecture has; each architecture's config subclasses this and adds its own."""

    arch: str = "llama"  # architecture (registry entry in slm.models); checkpoints without it are llama
    preset: str = ""  # name of the preset these values came from ("" = custom); informational
    vocab_size: int = 0  # 0 = the tokenizer's vocab rounded up to a multiple of 64; else must be >= the tokenizer's
    d_model: int = 128  # residual stream width
    n_layers: int = 4  # blocks
    max_seq_len: int = 2048  # longest sequence the position tables and decode state are sized for
    tie_embeddings: bool = True  # share input embedding and output head (saves vocab*d_model params; small models like it)
    init_std: float = 0.02  # std of the normal init; residual output projections are scaled by 1/sqrt(2*n_layers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def num_parameters(self) -> int:
        """Exact parameter count; the default builds the model on the meta device (no memory) and counts."""
        from .registry import build_model

        return build_model(self, device="meta").num_parameters()

    def architecture_fields(self) -> dict:
        """The fields that define the computed function (not its provenance or init): what must match on resume."""
        return {k: v for k, v in self.to_dict().items() if k not in ("preset", "init_std")}


class DecodeState(Protocol):
    """What the engine needs of any architecture's decode state (see `slm.models.layers.kv_cache.KVCache`)."""

    max_len: int

    def advance(self, n: int) -> None: ...  # host-side bookkeeping before a step (overflow check)
    def reset(self) -> None: ...  # empty it for reuse by the next request
    def tensors(self) -> tuple[torch.Tensor, ...]: ...  # flat tensors of the pure decode step
    # Continuous batching (slm.generate.batching; a state without these is served one batch at a time). Both work in
    # place (the tensors keep their identity, so a compiled step stays valid) and leave the other rows untouched.
    def insert(self, row: int, src: DecodeState) -> None: ...  # row `row` continues src's one (prefilled) row
    def release(self, row: int) -> None: ...  # forget row `row` (its request left); a full state may reuse its room


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B, T) -> (B, 1, T, T) bool: query t sees key s iff s <= t and both lie in the same document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def check_positions(positions: torch.Tensor, max_seq_len: int) -> None:
    """Raise when a RoPE position (B, T) reaches `max_seq_len` (the position tables end there). Reading the maximum is
    a host sync and a data-dependent branch, which an exporter cannot trace: skipped while exporting (the exported
    prefill builds its own state of at most `max_seq_len` slots, so it cannot get there)."""
    if torch.compiler.is_exporting():
        return
    if int(positions.max()) >= max_seq_len:
        raise ValueError(f"position {int(positions.max())} exceeds model.max_seq_len={max_seq_len}")


class CausalLM(nn.Module):
    """Base of every architecture. Subclasses implement the methods that raise NotImplementedError."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False  # recompute each block in backward: less memory, ~30% more compute
        # the chunked loss's per-chunk kernel compiled on its own (set while a sharded run's compiled blocks run:
        # slm.train.parallel.CompiledUnits; a whole-model graph fuses it anyway)
        self.compile_loss = False

    # ------------------------------------------------------------------------------------------------------------ #
    # what an architecture implements

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, d_model) matrix of the output head (the embedding when tied)."""
        raise NotImplementedError

    def hidden_states(self, input_ids: torch.Tensor, *, state: DecodeState | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> final normalised hidden states (B, T, C). Without a state the sequence starts at
        position 0 (training, scoring); with one, the tokens are appended to it (prefill), `attention_mask` (B, T)
        marking real tokens (False = left padding)."""
        raise NotImplementedError

    def hidden_step(self, input_ids: torch.Tensor, state: DecodeState, attention_mask: torch.Tensor) -> torch.Tensor:
        """The static-shape decode step: input_ids (B, 1), attention_mask (B, 1) bool -> hidden (B, 1, C). Reads no
        host value (compilable once per state shape); the caller has called `state.advance(1)`."""
        raise NotImplementedError

    def new_state(self, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> DecodeState:
        """An empty decode state for `batch_size` rows of up to `max_len` tokens."""
        raise NotImplementedError

    def state_from_tensors(self, tensors: tuple[torch.Tensor, ...]) -> DecodeState:
        """A functional (out-of-place) state over `state.tensors()` of one made by `new_state`."""
        raise NotImplementedError

    def reset_parameters(self, seed: int | None = None) -> None:
        raise NotImplementedError

    def materialize_buffers(self) -> None:
        """(Re)build non-persistent buffers on the parameters' device (after `to_empty` or an assign-load on meta)."""

    # ------------------------------------------------------------------------------------------------------------ #
    # shared

    def forward(self, input_ids: torch.Tensor, *, state: DecodeState | None = None,
                attention_mask: torch.Tensor | None = None, return_hidden: bool = False,
                targets: torch.Tensor | None = None, loss_chunk: int = 4096,
                doc_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab) in the compute dtype, or normalised hidden (B, T, C), or with
        `targets` (B, T) (already aligned: targets[:, t] is the token after input_ids[:, t]) the SUMMED next-token
        cross-entropy over targets != IGNORE_INDEX, computed chunk-wise without materialising the logits.

        With `doc_ids` (B, T) and `position_ids` (B, T) a row holds several packed documents that do not attend to
        each other and whose positions restart at 0. With a `state`, tokens are appended after what it holds; a
        one-token call goes through `forward_step` (the decode step).
        """
        B, T = input_ids.shape
        if state is not None and T == 1 and targets is None and state.max_len <= self.cfg.max_seq_len:
            state.advance(1)  # host-side bookkeeping stays out of the (compilable) step
            if attention_mask is None:
                attention_mask = torch.ones(B, 1, dtype=torch.bool, device=input_ids.device)
            return self.forward_step(input_ids, state, attention_mask.bool(), return_hidden=return_hidden)
        if doc_ids is not None and position_ids is None:
            raise ValueError("doc_ids needs position_ids (positions restarting at 0 in each document)")
        h = self.hidden_states(input_ids, state=state, attention_mask=attention_mask, doc_ids=doc_ids,
                               position_ids=position_ids)
        if targets is not None:
            return chunked_cross_entropy(h, self.output_weight, targets, chunk=loss_chunk, reduction="sum",
                                         compile_kernels=self.compile_loss)
        if return_hidden:
            return h
        return F.linear(h, self.output_weight)

    def forward_step(self, input_ids: torch.Tensor, state: DecodeState, attention_mask: torch.Tensor, *,
                     return_hidden: bool = False) -> torch.Tensor:
        """One decode step with static shapes: input_ids (B, 1), attention_mask (B, 1) bool -> logits (B, 1, vocab).
        The caller must call `state.advance(1)` first (`forward` does)."""
        h = self.hidden_step(input_ids, state, attention_mask)
        return h if return_hidden else F.linear(h, self.output_weight)

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    state_tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The decode step as a pure function: (ids (B, 1), mask (B, 1) bool, state tensors) -> (logits (B, 1, V),
        new state tensors). Nothing passed in is modified; ONNX / Core ML export trace this."""
        state = self.state_from_tensors(tuple(state_tensors))
        state.advance(1)
        logits = self.forward_step(input_ids, state, attention_mask)
        return logits, state.tensors()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The prefill as a pure function: ids (B, T), mask (B, T) bool (False = left padding) -> (logits (B, T, V),
        the tensors of a new state of `max_len` slots that holds the T tokens), ready for `decode_step`. The state is
        made inside, in the weights' dtype, so an exported prefill has only the prompt as input."""
        state = self.new_state(input_ids.shape[0], max_len, dtype=self.output_weight.dtype, device=input_ids.device)
        logits = self(input_ids, state=state, attention_mask=attention_mask)
        return logits, state.tensors()

    def param_roles(self) -> dict[str, Role]:
        """Role of every parameter (by name). Default: embeddings -> embedding, the output head -> output, 1-D
        tensors -> gain, other matrices -> matrix; architectures with experts, biases or scalars override."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        out_w = self.output_weight
        roles: dict[str, Role] = {}
        for name, p in self.named_parameters():
            if id(p) in embeddings:
                roles[name] = "embedding"
            elif p is out_w:
                roles[name] = "output"
            elif p.dim() <= 1:
                roles[name] = "gain" if p.numel() > 1 else "scalar"
            else:
                roles[name] = "matrix"
        return roles

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) of the matmul weights: 6 * (hidden matrices +
        the output head, counted even when tied). Architectures with attention add its score/value term."""
        roles = self.param_roles()
        params = dict(self.named_parameters())
        n = sum(params[k].numel() for k, r in roles.items() if r in HIDDEN_MATRIX_ROLES)
        return 6.0 * (n + self.output_weight.numel())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def shard_units(self) -> list[nn.Module]:
        """The modules a sharded layout (FSDP2) wraps one by one: each unit's parameters are gathered just before
        its forward and freed after it, so peak memory holds one unit in full. Default: every block of every
        `nn.ModuleList` attribute named `layers`, at any depth (a flat stack, or an H-Net's nested encoder, main and
        decoder stacks). A unit must only run through its `forward` (`unit(...)`) in training; the parameters outside
        every unit (embeddings, final norm, head) belong to the root. Override when the blocks live elsewhere."""
        units: list[nn.Module] = []
        for name, module in self.named_modules():
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
                units.extend(module)
        return units

    def step_metrics(self) -> dict[str, float]:
        """Architecture-specific figures of the last training forward (e.g. spike rates, expert usage), logged by the
        trainer each step. Empty for most architectures."""
        return {}

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary training losses of the last forward pass, already weighted (e.g. an MoE load-balancing loss),
        by name; the trainer adds them to the task's loss and logs them. None for most architectures."""
        return {}
