"""Causal grouped-query attention for short-context CPU training under torch.compile: softmax attention written as
bf16 batched GEMMs and fp32 elementwise maths for inductor to fuse, with a hand-written backward.

Why by hand: on CPU, `F.scaled_dot_product_attention` runs PyTorch's flash-attention kernel, whose backward takes about
6x its forward (10.4 ms vs 1.8 ms per layer on the reference config of `bench/train_throughput.py`, 2 threads): the
largest cost of a training step after the GEMMs. Here the same maths goes through oneDNN's batched GEMMs (AMX in
bf16) and inductor fuses the masking, softmax and gradient algebra into a few vectorised loops. Forward + backward of
one layer, bf16, 2 threads (`python bench/attention.py --seq T --batch B`, same tokens per call): 5.5 ms vs SDPA's
11.3 ms at T = 256 (batch 8, 6 heads / 2 KV heads); 12.4 vs 18.5 ms at T = 512; but 38 vs 22 ms at T = 1024, where
the T x T work outgrows the flash kernel's tiling (blocking the queries to skip masked key blocks lost to SDPA at
T = 1024 and 2048 too). So `use_dense` takes this path only for
T <= MAX_LEN, on CPU, with gradients on, while dynamo traces (eager, unfused, it is slower than SDPA). CUDA keeps
SDPA's flash kernels; inference keeps SDPA's forward. Any additive (T, T) bias works, so sliding-window layers pass
`window_bias` instead of `causal_bias`.

Backward: dS = P * (dP - rowsum(dO * O)), dQ = dS K, dK = dS^T Q, dV = P^T dO (scaled by 1/sqrt(D)), from the
probabilities P saved by the forward in the compute dtype (as HF's eager attention saves them). Recomputing P from
the row log-sum-exp instead (FlashAttention's way, O(T) memory) measured slower here: 11.2 vs 10.0 CPU-ms per layer
at T = 256 and 38 vs 24 at T = 512; saving P costs B*H*T*T*2 bytes per layer (6 MB at 8 x 6 x 256), which the
T <= MAX_LEN limit keeps small. GQA is native: the `rep` query heads that share a K/V head are stacked along rows, so
dK and dV sum over them inside the GEMM and K/V are never repeated. The causal mask is an additive (T, T) bias held
by the model as a buffer: as a tensor, inductor loads it; built from index arithmetic inside the graph, the same
kernel ran 1.4x slower.

`step_attention` is the decode step's one-query attention on CPU: the flash kernel spends ~140 us per call on one
query over a 128-slot cache (SmolLM2-135M, 1 thread: 4 ms of a 23 ms step); two small batched GEMMs and an fp32
masked softmax cost a third of that eager, and under inductor the products become reductions fused with the softmax
(see its docstring).
"""

from __future__ import annotations

import math

import torch

MAX_LEN = 512  # longest sequence the dense path takes (see the module docstring for the measurements)


def causal_bias(n: int = MAX_LEN, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) fp32: 0 on and below the diagonal, -inf above; `[:T, :T]` is the mask for any T <= n."""
    future = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)
    return torch.zeros(n, n, device=device).masked_fill_(future, float("-inf"))


def _acc(t: torch.Tensor) -> torch.dtype:
    """Softmax and gradient algebra run in fp32 (or fp64 for fp64 inputs)."""
    return torch.promote_types(t.dtype, torch.float32)


def _probs(qg: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, rep: int) -> torch.Tensor:
    """qg (B, Hk, rep*T, D), k (B, Hk, T, D) -> causal softmax probabilities in fp32 (B, Hk, rep, T, T)."""
    B, Hk, T, D = k.shape
    scores = (qg @ k.transpose(-1, -2)).to(_acc(qg)).view(B, Hk, rep, T, T) * (1.0 / math.sqrt(D)) + bias
    return torch.softmax(scores, dim=-1)


class _DenseCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, H, T, D = q.shape
        Hk = k.shape[1]
        rep = H // Hk
        qg = q.reshape(B, Hk, rep * T, D)
        p = _probs(qg, k, bias, rep).to(q.dtype).view(B, Hk, rep * T, T)
        out = (p @ v).view(B, H, T, D)
        ctx.save_for_backward(qg, k, v, out, p)
        return out

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        qg, k, v, out, p = ctx.saved_tensors
        B, Hk, T, D = k.shape
        rep = qg.shape[2] // T
        dog = d_out.to(qg.dtype).reshape(B, Hk, rep * T, D)
        acc = _acc(qg)
        delta = (dog.to(acc) * out.reshape(B, Hk, rep * T, D).to(acc)).sum(-1, keepdim=True)  # (B, Hk, rep*T, 1)
        dp = (dog @ v.transpose(-1, -2)).to(acc)  # (B, Hk, rep*T, T)
        ds = (p.to(acc) * (dp - delta) * (1.0 / math.sqrt(D))).to(qg.dtype)
        dq = (ds @ k).view(B, Hk * rep, T, D)
        dk = ds.transpose(-1, -2) @ qg  # (B, Hk, T, D): sums over the rep heads sharing this K head
        dv = p.transpose(-1, -2) @ dog
        return dq, dk, dv, None


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, Hk, T, D), H a multiple of Hk -> (B, H, T, D).
    `bias` = `causal_bias(n)` with n >= T (a compiled caller passes a tensor it holds, e.g. the model's buffer)."""
    T = q.shape[2]
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    if bias.shape[0] < T:
        raise ValueError(f"causal bias covers {bias.shape[0]} positions, the sequence has {T}")
    return _DenseCausalAttention.apply(q, k, v, bias[:T, :T])


def dense_applies(device: torch.device, seq_len: int) -> bool:
    """The dense path pays only on CPU, with gradients, for T <= MAX_LEN, inside torch.compile (module docstring)."""
    return (device.type == "cpu" and seq_len <= MAX_LEN and torch.is_grad_enabled()
            and torch.compiler.is_compiling())


def use_dense(q: torch.Tensor) -> bool:
    """`dense_applies` for queries q (B, H, T, D)."""
    return dense_applies(q.device, q.shape[2])


def window_bias(n: int, window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) fp32 additive mask of causal sliding-window attention: 0 where 0 <= i - j < window, else -inf."""
    i = torch.arange(n, device=device)
    dist = i[:, None] - i[None, :]
    return torch.zeros(n, n, device=device).masked_fill_((dist < 0) | (dist >= window), float("-inf"))


def step_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                   bias: torch.Tensor | None = None, fused: bool | None = None) -> torch.Tensor:
    """Attention of ONE query per row: q (B, H, 1, D) over k, v (B, Hk, S, D), `mask` (B, 1, 1, S) or per K/V head
    (B, Hk, 1, S) bool (True = attend) -> (B, H, 1, D); `bias` (B, Hk, S) is added to the scaled logits (Doge's
    per-key bias). The rep = H // Hk query heads of a K/V head are stacked as rows of one GEMM.

    `fused` (default: while dynamo compiles, not while it exports) writes both products as broadcast multiply + sum
    instead of batched GEMMs: the same sums in fp32 with the same bf16 roundings, which inductor turns into
    reductions fused with the scaling, the mask and the softmax, where each GEMM was an oneDNN call of ~30 us for a
    few KB of work (2 of 14 ms of a compiled SmolLM2-135M step). Eager (and in an exported graph), the GEMMs are
    faster: no (.., S, D) product is materialised."""
    B, H, _, D = q.shape
    Hk, S = k.shape[1], k.shape[2]
    acc = _acc(q)
    if fused is None:
        fused = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
    qg = q.reshape(B, Hk, H // Hk, D)  # (B, Hk, rep, D)
    if fused:
        scores = (qg[:, :, :, None].to(acc) * k[:, :, None].to(acc)).sum(-1).to(q.dtype)  # (B, Hk, rep, S)
    else:
        scores = qg @ k.transpose(-1, -2)
    scores = scores.to(acc) * (1.0 / math.sqrt(D))
    if bias is not None:
        scores = scores + bias[:, :, None].to(acc)
    scores = scores.masked_fill(~mask.reshape(B, -1, 1, S), float("-inf"))
    p = torch.softmax(scores, dim=-1).to(v.dtype)
    if fused:
        y = (p[..., None].to(acc) * v[:, :, None].to(acc)).sum(-2).to(v.dtype)  # (B, Hk, rep, D)
    else:
        y = p @ v
    return y.reshape(B, H, 1, D)
