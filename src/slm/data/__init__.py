"""Data: raw sources -> document stream -> packed token shards -> resumable batches.

Names are resolved lazily (PEP 562) so that tokenizer worker processes, which import `slm.data.pack`, do not pay for
importing torch through `slm.data.loader`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "iter_documents": "slm.data.sources",
    "list_source_files": "slm.data.sources",
    "prepare_dataset": "slm.data.pack",
    "TokenDataset": "slm.data.loader",
    "BatchLoader": "slm.data.loader",
    "iter_eval_batches": "slm.data.loader",
    "dataset_stats": "slm.data.stats",
    "format_stats": "slm.data.stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
