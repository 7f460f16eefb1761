"""Tokenizers: raw bytes, trained byte-level BPE, or loaded from HF-style files; one `Tokenizer` type for all."""

from slm.tokenizer.bpe import train_bpe
from slm.tokenizer.bytes import byte_tokenizer
from slm.tokenizer.core import CHATML_TEMPLATE, Tokenizer, load_tokenizer, wrap_hf_tokenizer

__all__ = ["CHATML_TEMPLATE", "Tokenizer", "byte_tokenizer", "load_tokenizer", "train_bpe", "wrap_hf_tokenizer"]
