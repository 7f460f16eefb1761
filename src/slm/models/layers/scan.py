"""The elementwise linear recurrence h_t = f_t * h_{t-1} + x_t over a whole sequence, without a loop over time.

Used by HGRN-Bit's token mixer and H-Net's dechunking EMA (slm.models.hgrn_bit, slm.models.hnet).

Decisions:
- Forward is a Hillis-Steele associative scan on the pairs (f, x) with (f1, x1) . (f2, x2) = (f1 f2, f2 x1 + x2):
  ceil(log2 T) vectorised passes (10 at T = 1024), each a multiply-add over the whole (B, T, D) tensor. It is a loop
  over tree levels, never over time. A log-space cumsum would be fewer passes but divides by cumulative products
  that underflow (and a reset gate f = 0, used at document starts, has no logarithm); the tree only multiplies
  numbers in [0, 1], so it is as stable as the sequential loop.
- Backward is the same scan run in reverse, written by hand (`torch.autograd.Function`): the gradient of h_t flows
  into h_{t-1} with weight f_t, so G_t = g_t + f_{t+1} G_{t+1}, dx_t = G_t, df_t = G_t h_{t-1}. Autograd through the
  tree would keep every level's intermediates (log2 T copies of the sequence); this keeps f and h only.
- Computed in fp32 whatever the autocast dtype (the state accumulates over thousands of steps).
- flash-linear-attention's Triton HGRN kernel is used on CUDA when importable (`fla.ops.hgrn`) and when, on a first
  probe, it computes the same recurrence as this scan (their gate is log f); never imported on CPU, never
  required. (Not exercised here: no CUDA machine was available; the probe is what guards it.)
- While exporting (torch.export, ONNX) the length is symbolic and `while k < T` cannot be traced: given an upper
  bound `max_len` (the decode state's), the same levels run a fixed ceil(log2 max_len) times, each shift a zero pad
  and a slice (`_tree_scan_levels`; identical sums for any T <= max_len, no branch on T). Training keeps the slices.
bench/hgrn_scan.py measures this scan against a per-timestep loop (forward + backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _tree_scan(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f, x (B, T, D) -> h (B, T, D), h_t = f_t h_{t-1} + x_t with h_{-1} = 0 (Hillis-Steele; new tensors only)."""
    a, b = f.clone(), x.clone()
    T, k = x.shape[1], 1
    while k < T:
        b_new = torch.addcmul(b[:, k:], a[:, k:], b[:, :-k])  # b_t + a_t * b_{t-k}
        if 2 * k < T:  # the products are not needed after the last level
            a[:, k:] = a[:, k:] * a[:, :-k]
        b[:, k:] = b_new
        k *= 2
    return b


def _tree_scan_levels(f: torch.Tensor, x: torch.Tensor, max_len: int) -> torch.Tensor:
    """`_tree_scan` for a symbolic T <= max_len (torch.export): ceil(log2 max_len) levels whatever T, the shift by k a
    zero pad and a slice, so the graph has no branch on T. A level with k >= T adds zeros (the sums are unchanged)."""
    T, levels = x.shape[1], max(1, (max_len - 1).bit_length())  # 2 ** levels >= max_len
    a, b = f, x
    for level in range(levels):
        k = 1 << level
        b_new = torch.addcmul(b, a, F.pad(b, (0, 0, k, 0))[:, :T])  # b_t + a_t * b_{t-k}, b_{t-k} = 0 for t < k
        if level + 1 < levels:
            a = a * F.pad(a, (0, 0, k, 0), value=1.0)[:, :T]  # a_t * a_{t-k}, a_{t-k} = 1 for t < k
        b = b_new
    return b


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 0] = torch.addcmul(x[:, 0], f[:, 0], h0)  # fold the initial state into the first input
        h = _tree_scan(f, x)
        ctx.save_for_backward(f, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, h, h0 = ctx.saved_tensors
        f_next = torch.zeros_like(f)
        f_next[:, :-1] = f[:, 1:]  # the weight with which G_{t+1} flows back into h_t
        g = _tree_scan(f_next.flip(1), grad.flip(1)).flip(1)  # G_t = grad_t + f_{t+1} G_{t+1}
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)
        return g * h_prev, g, g[:, 0] * f[:, 0]


_FLA_CHECKED: dict[str, bool] = {}  # device type -> fla's kernel agreed with the PyTorch scan on a probe


def _fla_kernel(f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    from fla.ops.hgrn import chunk_hgrn  # optional: pip install flash-linear-attention

    # fla takes the log of the forget gate; a reset gate (f = 0) becomes a very negative number instead of -inf.
    out, _ = chunk_hgrn(x, torch.log(f.clamp_min(1e-30)), initial_state=h0, output_final_state=False)
    return out.float()


def _fla_scan(f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor | None:
    """flash-linear-attention's chunked HGRN kernel (CUDA, Triton), or None when it is not installed or, on a first
    probe against the PyTorch scan, does not compute the same recurrence (then the PyTorch scan is used)."""
    key = x.device.type
    if key not in _FLA_CHECKED:
        try:
            gen = torch.Generator(device=x.device).manual_seed(0)
            pf = torch.rand(2, 100, 64, device=x.device, generator=gen)
            px = torch.randn(2, 100, 64, device=x.device, generator=gen)
            ph = torch.randn(2, 64, device=x.device, generator=gen)
            want = _LinearScan.apply(pf, px, ph)
            _FLA_CHECKED[key] = bool(torch.allclose(_fla_kernel(pf, px, ph), want, atol=1e-4, rtol=1e-4))
        except Exception:  # noqa: BLE001 (not installed, or failing: use the PyTorch scan)
            _FLA_CHECKED[key] = False
    return _fla_kernel(f, x, h0) if _FLA_CHECKED[key] else None


def linear_scan(f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None, *,
                use_fla: bool = True, max_len: int | None = None) -> torch.Tensor:
    """f, x (B, T, D), optional initial state h0 (B, D) -> h (B, T, D) fp32 with h_t = f_t * h_{t-1} + x_t.
    `max_len` bounds T while exporting (a symbolic T): then the scan runs a fixed number of levels (module docstring)."""
    f, x = f.float(), x.float()
    if h0 is None:
        h0 = torch.zeros_like(x[:, 0])
    h0 = h0.float()
    if max_len is not None and torch.compiler.is_exporting():  # inference only: no autograd Function to trace
        x = torch.cat([torch.addcmul(x[:, :1], f[:, :1], h0[:, None]), x[:, 1:]], dim=1)  # fold h0 into x_0
        return _tree_scan_levels(f, x, max_len)
    if use_fla and x.is_cuda:
        out = _fla_scan(f, x, h0)
        if out is not None:
            return out.float()
    return _LinearScan.apply(f, x, h0)


def linear_scan_naive(f: torch.Tensor, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: one step per time index (what the scan replaces; tests and bench/hgrn_scan.py only)."""
    h = torch.zeros_like(x[:, 0]) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        h = f[:, t] * h + x[:, t]
        out.append(h)
    return torch.stack(out, dim=1)
