"""Keep freed host memory in the process between training steps on the CPU (glibc's malloc settings).

Why: a CPU training step allocates and frees the same few hundred MB of activations, logits chunks and gradients
every step, and PyTorch has no caching allocator for CPU tensors: each tensor is a plain malloc/free. glibc serves
large blocks with mmap (above a threshold that adapts up to 32 MiB) and returns the free top of its heap to the OS
(above a trim threshold of twice that), so each step page-faults its memory back in, zero-filled by the kernel. On
the reference step of `bench/train_throughput.py` that was ~16,700 page faults (~68 MB) per step. Keeping the memory
(2 threads, separate processes, medians of 8 rounds) took slm's compiled bf16 step from ~7,700-8,300 to
~8,800-8,900 tok/s and HF's plain bf16 loop from ~4,400 to ~5,100 (the bench times both: slm_glibc with --ablate,
and hf_bf16_keepmem); the quickstart's training (300 steps, alternating runs) went from 17.9-18.6k to 19.3-19.7k.
The usual advice, jemalloc or tcmalloc through LD_PRELOAD, has to be set before Python starts; glibc's `mallopt`
can be changed at run time, which is what this does: blocks up to 1 GiB come from the heap and freed memory stays
in it. The cost is RSS: the process keeps its high-water mark instead of shrinking between steps, a mark a training
loop reaches again at every step anyway (`bench/memory.py`'s peak moved from 2,524 to 2,530 MiB).

Only glibc (Linux) has these knobs; elsewhere `retain_freed_memory` does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
KEEP_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB from the heap
KEEP_TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt's int takes: never trim in practice


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def retain_freed_memory() -> bool:
    """Make freed host memory stay in this process for good (module docstring): setting a threshold also ends glibc's
    adaptation of it. True when applied (glibc), else False."""
    libc = _glibc()
    return (libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)))
