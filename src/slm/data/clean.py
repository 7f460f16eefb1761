"""Quality filters of the data pipeline: datatrove's filters by name, plus length and regex, with removal accounting.

Design decisions
- The filters themselves are datatrove's (`GopherQualityFilter`, `GopherRepetitionFilter`, `C4QualityFilter`,
  `C4ParagraphFilter`, `C4BadWordsFilter`, `FineWebQualityFilter`, `RegexFilter`, `LanguageFilter`): FineWeb was built
  with exactly these, so their thresholds are the published ones and a recipe entry's extra keys are passed to the
  constructor unchanged (`{name: gopher_quality, min_doc_words: 20}`). Only `length` (characters and words) is written
  here: it is three comparisons and needs no word tokenizer.
- Removal accounting uses datatrove's own hook: every filter gets an `exclusion_writer`. Instead of writing every
  removed document to disk (datatrove's `JsonlWriter`), `RemovedSampler` counts documents, bytes and reasons and keeps
  the first few examples per task, written as one small JSON per (filter, task) that the report merges. So the report
  says what each filter removed and shows what that looked like, at constant memory.
- The language filter needs fastText's lid.176.bin, which datatrove downloads on first use. This machine cannot
  download it, so the filter is checked when the pipeline is built: a missing model is a one-line error naming the
  file to place, instead of a network traceback from inside a worker.
- The word-level filters use datatrove's spaCy tokenizer (blank English model, nothing downloaded); they are the slow
  part of cleaning (Gopher ~0.3 MB/s per core), which is why the bench measures them separately.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from slm.data.lazyclass import lazy_class, module_getattr
from slm.errors import SlmError, atomic_write_text

EXAMPLES_PER_TASK = 3
EXAMPLE_CHARS = 300

# name -> (module, class) of datatrove filters taking their documented keyword arguments.
DATATROVE_FILTERS = {
    "gopher_quality": ("datatrove.pipeline.filters.gopher_quality_filter", "GopherQualityFilter"),
    "gopher_repetition": ("datatrove.pipeline.filters.gopher_repetition_filter", "GopherRepetitionFilter"),
    "c4": ("datatrove.pipeline.filters.c4_filters", "C4QualityFilter"),
    "c4_paragraph": ("datatrove.pipeline.filters.c4_filters", "C4ParagraphFilter"),
    "c4_badwords": ("datatrove.pipeline.filters.c4_filters", "C4BadWordsFilter"),
    "fineweb": ("datatrove.pipeline.filters.fineweb_quality_filter", "FineWebQualityFilter"),
    "regex": ("datatrove.pipeline.filters.regex_filter", "RegexFilter"),
    "language": ("datatrove.pipeline.filters.language_filter", "LanguageFilter"),
}
FILTER_NAMES = sorted([*DATATROVE_FILTERS, "length"])


class RemovedSampler:
    """A datatrove `exclusion_writer` that counts removed documents and keeps the first few as examples."""

    def __init__(self, folder: str, filter_id: str, examples: int = EXAMPLES_PER_TASK) -> None:
        self.folder, self.filter_id, self.examples = folder, filter_id, examples
        self._reset()

    def _reset(self) -> None:
        self.rank: int | None = None
        self.counts = {"documents": 0, "bytes": 0, "reasons": {}, "examples": []}

    def __enter__(self) -> RemovedSampler:
        self._reset()
        return self

    def write(self, document: Any, rank: int = 0, **_: Any) -> None:
        self.rank = rank
        c = self.counts
        c["documents"] += 1
        c["bytes"] += len(document.text.encode("utf-8"))
        reason = document.metadata.get("filter_reason") or "rejected"
        c["reasons"][reason] = c["reasons"].get(reason, 0) + 1
        if len(c["examples"]) < self.examples:
            c["examples"].append({"source": document.metadata.get("source", ""), "key": document.id, "reason": reason,
                                  "text": document.text[:EXAMPLE_CHARS]})

    def __exit__(self, *exc: Any) -> None:
        if self.rank is not None and not any(exc):
            path = Path(self.folder) / self.filter_id / f"{self.rank:05d}.json"
            atomic_write_text(path, json.dumps(self.counts, ensure_ascii=False) + "\n")


def _build_length_filter() -> type:
    """`LengthFilter`, a datatrove BaseFilter built on first use so importing this module does not need datatrove."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    class LengthFilter(BaseFilter):
        """Keep documents with min_chars <= characters <= max_chars and at least min_words words (0 = no bound)."""

        name = "📏 Length"

        def __init__(self, min_chars: int = 0, max_chars: int = 0, min_words: int = 0, exclusion_writer=None) -> None:
            super().__init__(exclusion_writer)
            self.min_chars, self.max_chars, self.min_words = int(min_chars), int(max_chars), int(min_words)

        def filter(self, doc: Any) -> bool | tuple[bool, str]:
            n = len(doc.text)
            if n < self.min_chars:
                return False, "too_short"
            if self.max_chars and n > self.max_chars:
                return False, "too_long"
            if self.min_words and len(doc.text.split()) < self.min_words:
                return False, "too_few_words"
            return True

    return LengthFilter


def _length_filter_class() -> type:
    return lazy_class(globals(), "LengthFilter", _build_length_filter)


# Worker processes unpickle `slm.data.clean.LengthFilter` by name: built on demand.
__getattr__ = module_getattr(globals(), {"LengthFilter": _build_length_filter})


def language_model_path() -> Path:
    """Where datatrove looks for (and would download) fastText's lid.176.bin."""
    from datatrove.io import cached_assets_path
    from datatrove.utils.lid import FT176LID

    folder = cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
    url = FT176LID.MODEL_URL
    return Path(folder) / url.split("://", 1)[-1].replace("/", "_")


def _check_language_model(where: str) -> None:
    path = language_model_path()
    if not path.is_file():
        raise SlmError(f"{where}: the language filter needs fastText's lid.176.bin, which cannot be downloaded here; "
                       f"place it at {path} or remove the filter")


def filter_id(spec: dict, index: int) -> str:
    """Name of a filter in the report: `id:` when given, else `name`, suffixed with its position when repeated."""
    return str(spec.get("id") or f"{index:02d}_{spec.get('name')}")


def build_filter(spec: dict, index: int, removed_dir: str) -> Any:
    """One datatrove filter from a recipe entry `{name: ..., <constructor keys>}`."""
    where = f"clean.filters[{index}]"
    if not isinstance(spec, dict) or "name" not in spec:
        raise SlmError(f"{where}: expected a mapping with a name (one of {', '.join(FILTER_NAMES)})")
    name = spec["name"]
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "id")}
    sampler = RemovedSampler(removed_dir, filter_id(spec, index))
    if name == "length":
        cls = _length_filter_class()
    elif name in DATATROVE_FILTERS:
        module, cls_name = DATATROVE_FILTERS[name]
        cls = getattr(importlib.import_module(module), cls_name)
        if name == "regex":
            if "pattern" not in kwargs:
                raise SlmError(f"{where}: the regex filter needs `pattern:` (documents matching it are removed)")
            kwargs["regex_exp"] = kwargs.pop("pattern")
        if name == "language":
            _check_language_model(where)
        if name in ("gopher_repetition",):  # YAML gives lists; datatrove compares against tuples of pairs
            for key in ("top_n_grams", "dup_n_grams"):
                if key in kwargs:
                    kwargs[key] = tuple(tuple(x) for x in kwargs[key])
    else:
        raise SlmError(f"{where}: unknown filter {name!r}; choose one of {', '.join(FILTER_NAMES)}")
    try:
        return cls(**kwargs, exclusion_writer=sampler)
    except TypeError as e:
        raise SlmError(f"{where} ({name}): bad option ({e}); see the datatrove {cls.__name__} arguments") from None
    except ImportError as e:  # datatrove checks a filter's own dependencies (spacy, fasttext, ...) on construction
        raise SlmError(f"{where} ({name}): {e}") from None
    except Exception as e:  # e.g. re.error for a bad pattern
        raise SlmError(f"{where} ({name}): {type(e).__name__}: {e}") from None


def build_filters(specs: list[dict], removed_dir: str) -> list[Any]:
    """All filters of `clean.filters`, in order; validated here so errors surface before any worker starts."""
    return [build_filter(spec, i, removed_dir) for i, spec in enumerate(specs)]


def collect_removed(specs: list[dict], removed_dir: str) -> dict[str, dict]:
    """Per filter: removed documents, bytes, reasons and up to EXAMPLES_PER_TASK * 2 examples, merged over tasks."""
    out: dict[str, dict] = {}
    for i, spec in enumerate(specs):
        fid = filter_id(spec, i)
        total = {"filter": spec.get("name"), "documents": 0, "bytes": 0, "reasons": {}, "examples": []}
        for file in sorted((Path(removed_dir) / fid).glob("*.json")):
            part = json.loads(file.read_text(encoding="utf-8"))
            total["documents"] += part["documents"]
            total["bytes"] += part["bytes"]
            for reason, n in part["reasons"].items():
                total["reasons"][reason] = total["reasons"].get(reason, 0) + n
            total["examples"] += part["examples"][: max(0, 2 * EXAMPLES_PER_TASK - len(total["examples"]))]
        out[fid] = total
    return out
