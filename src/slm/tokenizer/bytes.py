"""The byte tokenizer: id == byte value for 0..255, special tokens from 256 on.

Design decisions
- Built as a HF BPE model with an empty merge list over the GPT-2 byte -> unicode alphabet, ordered so that the id of
  byte b's stand-in character is b. Being a real `tokenizers.Tokenizer` means it saves, hashes and loads in
  `transformers` exactly like a trained BPE, and the data/eval code never special-cases it.
- The ByteLevel pre-tokenizer runs without its regex (`use_regex=False`): splitting into words would change nothing for
  a merge-free model and only cost time. No prefix space is added, so `decode(encode(s)) == s` for any string.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from slm.tokenizer.core import BOS, DEFAULT_SPECIALS, EOS, PAD, Tokenizer, bytes_to_unicode


def byte_tokenizer(extra_special_tokens: Sequence[str] = ()) -> Tokenizer:
    """A 256-byte vocabulary plus `<|bos|> <|eos|> <|pad|> <|im_start|> <|im_end|>` (ids 256..260) and extras."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    inner = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    inner.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys([*DEFAULT_SPECIALS, *extra_special_tokens]))
    inner.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return Tokenizer(inner, bos_token=BOS, eos_token=EOS, pad_token=PAD)
