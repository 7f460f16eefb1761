"""Train a byte-level BPE tokenizer with HF `tokenizers`.

Design decisions
- The merge learning itself is the Rust `BpeTrainer`: it is fast, well tested and produces a tokenizer.json that
  transformers loads. What is done here by hand is the input handling: files are read in Python in ~1 MB pieces cut at
  line ends with `errors="replace"`, so a stray non-UTF-8 byte does not abort training and files of any size stream.
- Special tokens come first, so their ids are 0..k-1 in the fixed order `<|bos|> <|eos|> <|pad|> <|im_start|>
  <|im_end|>` followed by any extras; then the 256 byte symbols (`initial_alphabet`), so every string is encodable
  even if some byte never occurs in the corpus; then merges.
- GPT-2's pre-tokenization regex (the ByteLevel default) keeps merges inside words, digits and punctuation runs; no
  prefix space is added, so `decode(encode(s)) == s` holds for every string.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from slm.errors import SlmError
from slm.tokenizer.core import BOS, DEFAULT_SPECIALS, EOS, PAD, Tokenizer

_READ_CHUNK = 1 << 20


def _read_file_chunks(path: Path) -> Iterator[str]:
    """Yield a text file in ~1 MB pieces that end at a newline (pre-tokenization never straddles a cut)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                return
            rest = f.readline()
            yield chunk + rest


def _texts(files_or_iterator: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[Iterator[str], str]:
    """Normalise the input to an iterator of strings plus a description for error messages."""
    if isinstance(files_or_iterator, (str, os.PathLike)):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, (list, tuple)) and all(
        isinstance(p, (str, os.PathLike)) for p in files_or_iterator
    ):
        paths = [Path(p) for p in files_or_iterator]
        for p in paths:
            if not p.is_file():
                raise SlmError(f"{p}: tokenizer training file not found; pass existing text files")
        return itertools.chain.from_iterable(_read_file_chunks(p) for p in paths), ", ".join(map(str, paths))
    return (str(t) for t in files_or_iterator), "the training text iterator"


def train_bpe(
    files_or_iterator: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int = 32768,
    min_frequency: int = 2,
    show_progress: bool = True,
    extra_special_tokens: Sequence[str] = (),
) -> Tokenizer:
    """Train byte-level BPE and return the wrapped tokenizer.

    `files_or_iterator` is a path, a list/tuple of paths (text files), or any other iterable (e.g. a generator) of
    text strings. A list of strings is read as file paths, never as texts: pass `iter(texts)` for in-memory text.
    """
    specials = list(dict.fromkeys([*DEFAULT_SPECIALS, *extra_special_tokens]))
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise SlmError(
            f"vocab_size={vocab_size} is too small: 256 byte symbols + {len(specials)} special tokens need "
            f"vocab_size >= {minimum}"
        )
    texts, where = _texts(files_or_iterator)
    # Peek until the first non-blank text so an empty corpus fails before the trainer runs.
    seen: list[str] = []
    for text in texts:
        seen.append(text)
        if text.strip():
            break
    else:
        raise SlmError(f"{where}: no text to train the tokenizer on; give a non-empty corpus")
    inner = HFTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    inner.train_from_iterator(itertools.chain(seen, texts), trainer=trainer)
    return Tokenizer(inner, bos_token=BOS, eos_token=EOS, pad_token=PAD)
