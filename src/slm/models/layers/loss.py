"""Next-token cross-entropy fused with the output projection, computed from hidden states in chunks.

The full (B*T, vocab) logits tensor in fp32 is the largest activation of a small LM (SmolLM2: 49152 x 2048 x 4 B =
400 MB per sequence, more than all its layers' activations). `chunked_cross_entropy` projects and reduces one chunk of
rows at a time, so peak memory holds one chunk of logits, never all of them. Targets are already aligned with
positions (the data loader does the one shift); this function never shifts. `ignore_index` positions count for
nothing, in numerator and denominator.

Decisions (each measured with `bench/train_throughput.py`; see its docstring):
- Gradients are computed in the forward pass (the "fused linear cross-entropy" of Liger-Kernel): while a chunk's
  logits exist, d(sum CE)/d(logits) = softmax - onehot is formed at once and pushed through the projection into
  grad_hidden (N, C) and grad_weight (V, C); backward only scales them by the incoming gradient. The alternative —
  save hidden, recompute each chunk's logits in backward — costs one more (N x C x V) GEMM and a second softmax pass;
  the saved gradients take the same memory as the saved inputs did. When no gradient is needed (eval, no_grad) the
  forward computes the loss only.
- The GEMMs run in the autocast dtype when autocast is on (also for the gradient GEMMs, which would otherwise run in
  fp32 because backward runs outside autocast: that was 3 fp32 GEMMs of the head's size per step, ~20 % of a bf16
  step on the reference config). Softmax, log-sum-exp and the loss sum are always fp32; grad_weight accumulates in
  fp32 across chunks.
- No boolean indexing (it syncs with the host): ignored rows are zeroed with a mask multiply.
- Compiled, each chunk's gradient is written transposed, (V, n) contiguous, so both gradient GEMMs read it with a
  unit stride along their reduction: grad_weight = g^T h becomes a plain (V, n) x (n, C) product. oneDNN's bf16
  GEMM is much slower on the other layout here (grad_weight 1.65 vs 2.8 TFLOP/s, 2 threads, hot cache); inductor
  writes the transposed layout straight from the kernel that forms g. In eager the extra transposing copy cost
  more than it saved (fused loss forward + backward on the reference shapes: 101 vs 71 ms), so eager keeps (n, V).
- Compiled, the gradient is one expression — exp(x - lse) minus a one-hot built by comparing column indices —
  instead of the eager in-place scatter: an in-place scatter splits inductor's kernel and sends an fp32 copy of the
  chunk through memory and back. Both changes together: +4 % tok/s on the reference step (A/B, same process).
- Under a torch.compile'd model (`--train.compile=true`) dynamo traces this function with the model and inductor
  fuses the per-chunk fp32 upcast, exp, subtraction and downcast into one pass over the chunk's logits. An eager
  model can get that fusion alone with `compile_kernels=True`; it is off by default because the first call
  compiles for tens of seconds.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _ce_chunk(logits: torch.Tensor, targets: torch.Tensor, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (n, V) any float dtype, targets (n,) -> (summed CE in fp32, d(sum CE)/d(logits) TRANSPOSED, (V, n), in
    logits' dtype): contiguous when compiled, a view of the (n, V) gradient in eager (module docstring)."""
    x = logits.float()  # (n, V) the one fp32 copy (eager forms the gradient in it in place)
    valid = targets != IGNORE_INDEX  # (n,)
    safe = torch.where(valid, targets, 0)[:, None]  # (n, 1)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (n, 1)
    vmask = valid[:, None].to(x.dtype)
    loss = ((lse - x.gather(1, safe)) * vmask).sum()
    if not want_grad:
        return loss, None
    if torch.compiler.is_compiling():  # one fused pass writing the transposed layout (module docstring)
        onehot = torch.arange(x.shape[1], device=x.device) == safe
        grad = (torch.exp(x - lse) - onehot.to(x.dtype)) * vmask
        return loss, grad.to(logits.dtype).t().contiguous()
    # eager: in place in the fp32 copy; a transposing copy here would cost more than the GEMMs gain
    grad = x.sub_(lse).exp_().scatter_add_(1, safe, -vmask).mul_(vmask)  # (softmax - onehot) on valid rows
    return loss, grad.to(logits.dtype).t()


_compiled_ce_chunk: Callable | None = None


def _chunk_kernel(compiled: bool) -> Callable:
    global _compiled_ce_chunk
    if not compiled:
        return _ce_chunk
    if _compiled_ce_chunk is None:
        _compiled_ce_chunk = torch.compile(_ce_chunk, dynamic=False)
    return _compiled_ce_chunk


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


# Rows per chunk: at most CHUNK_ELEMENTS / vocab, so one chunk's transient memory (bf16 logits + an fp32 copy +
# scratch, ~10 bytes per element) stays near 40 MB, but never fewer than MIN_CHUNK_ROWS, below which the head's GEMMs
# and the per-chunk fp32 accumulation of grad_weight (vocab x d_model) dominate (so ~126 MB at a 49152 vocab).
# Measured on the reference config (vocab 8192, 2048 rows, fused loss forward + backward): 256-512 rows ~47-53 ms,
# 2048 rows (one chunk) 81 ms, 128 rows 66 ms; SmolLM2's vocab 49152: 256-341 rows ~830 ms, 64 rows 2,280 ms.
CHUNK_ELEMENTS = 1 << 22
MIN_CHUNK_ROWS = 256


def chunk_rows(chunk: int, vocab: int) -> int:
    """Rows per chunk: the requested `chunk`, capped by CHUNK_ELEMENTS / vocab but not below MIN_CHUNK_ROWS."""
    return max(1, min(chunk, max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)))


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                compile_kernels: bool) -> torch.Tensor:
        # hidden (N, C), weight (V, C), targets (N,) -> summed loss (scalar, fp32)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_grad = need_h or need_w
        cdt = _compute_dtype(hidden)
        h, w = hidden.to(cdt), weight.to(cdt)
        kernel = _chunk_kernel(compile_kernels)
        chunk = chunk_rows(chunk, weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, C)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None  # (V, C)
        for s in range(0, h.shape[0], chunk):
            hc = h[s:s + chunk]
            with torch.autocast(hidden.device.type, enabled=False):
                loss, g_t = kernel(F.linear(hc, w), targets[s:s + chunk], want_grad)  # g_t (V, n) in cdt
                total += loss
                if need_h:
                    grad_h[s:s + chunk] = g_t.t() @ w
                if need_w:
                    grad_w += (g_t @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int = 4096, reduction: str = "mean", compile_kernels: bool = False) -> torch.Tensor:
    """hidden (B, T, C) or (N, C), weight (V, C), targets (B, T) or (N,) -> next-token CE ("mean" over valid or "sum")."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    total = _FusedLinearCE.apply(h, weight, t, chunk, compile_kernels)
    if reduction == "sum":
        return total
    return total / (t != IGNORE_INDEX).sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Plain next-token CE on already-aligned logits (B, T, V) and targets (B, T), computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)
