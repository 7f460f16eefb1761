"""The one tokenizer type of `slm`: a thin wrapper around a Hugging Face `tokenizers.Tokenizer`.

Design decisions
- Every tokenizer (raw bytes, trained BPE, GPT-2 or SmolLM2 folders) is a HF `tokenizers.Tokenizer` underneath, so the
  Rust encoder does the work and `save()` output loads unchanged in `transformers` (`AutoTokenizer.from_pretrained`).
- `encode` is plain: no post-processor template, no padding, no truncation. BOS/EOS are added only when asked, so the
  data packer, the chat formatter and generation each decide explicitly where specials go. Special-token strings that
  appear in the text are still matched (HF behaviour), which is what a chat prompt rendered as text needs.
- Specials are resolved once, at construction: `bos`/`eos`/`pad` come from the source's `tokenizer_config.json` when it
  names them, else from well-known spellings (`<|endoftext|>` for GPT-2), else `<|bos|>`/`<|eos|>`/`<|pad|>` are
  added. A missing pad reuses the source's own EOS (pad positions never carry loss), so a pretrained vocabulary is not
  grown just for padding. ChatML markers `<|im_start|>`/`<|im_end|>` are added only when the source has no chat
  template of its own.
- `token_byte_lengths` is computed by hand from the GPT-2 byte<->unicode map for byte-level tokenizers: decoding one
  token at a time is wrong for tokens that hold part of a multi-byte character, and bits-per-byte needs exact counts.
- `hash()` is the sha256 of the canonical `tokenizer.json` string; data manifests record it so a model is never fed
  ids from a different vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from slm.errors import SlmError, atomic_write_text

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
DEFAULT_SPECIALS: tuple[str, ...] = (BOS, EOS, PAD, IM_START, IM_END)

# Spellings other tokenizers use for the same roles, tried in order when no tokenizer_config.json names them.
_BOS_ALIASES = (BOS, "<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>")
_EOS_ALIASES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>")
_PAD_ALIASES = (PAD, "<pad>", "[PAD]", "<|finetune_right_pad_id|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by HF ByteLevel pre-tokenizers and decoders.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, soft hyphen, ...) are shifted to
    code points 256.. in byte order, so every byte has a visible, non-whitespace stand-in.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def _config_token(value: object) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class Tokenizer:
    """A HF `tokenizers.Tokenizer` plus resolved bos/eos/pad tokens and a chat template."""

    def __init__(
        self,
        inner: HFTokenizer,
        *,
        bos_token: str,
        eos_token: str,
        pad_token: str,
        chat_template: str | None = None,
    ) -> None:
        inner.no_padding()
        inner.no_truncation()
        _drop_template_post_processor(inner)
        self.inner = inner
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template or CHATML_TEMPLATE
        ids = {name: inner.token_to_id(name) for name in (bos_token, eos_token, pad_token)}
        missing = [name for name, i in ids.items() if i is None]
        if missing:
            raise SlmError(
                f"tokenizer: special token(s) {missing} are not in the vocabulary; add them or fix the config"
            )
        self.bos_id: int = ids[bos_token]
        self.eos_id: int = ids[eos_token]
        self.pad_id: int = ids[pad_token]
        specials = {tok.content: i for i, tok in inner.get_added_tokens_decoder().items() if tok.special}
        specials.update(ids)
        self.special_tokens: dict[str, int] = dict(sorted(specials.items(), key=lambda kv: kv[1]))

    # -- basics ---------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included: the model's embedding needs at least this many rows."""
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, with BOS/EOS only when asked."""
        ids = self.inner.encode(text, add_special_tokens=False).ids
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Plain ids for many texts at once (parallel in Rust)."""
        return [enc.ids for enc in self.inner.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; special tokens are kept unless `skip_special`."""
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when it is not in the vocabulary."""
        return self.inner.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when out of range."""
        return self.inner.id_to_token(int(token_id))

    def to_json(self) -> str:
        """The canonical tokenizer.json text."""
        return self.inner.to_str()

    def hash(self) -> str:
        """sha256 of the canonical tokenizer.json: equal hashes mean equal id <-> text mappings."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def __reduce__(self) -> tuple:
        # Pickle through the JSON string: HF objects pickle too, but JSON is the stable, version-checked form.
        return (_rebuild, (self.to_json(), self.bos_token, self.eos_token, self.pad_token, self.chat_template))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r})"

    # -- bits-per-byte support -----------------------------------------------------------------------------------
    def is_byte_level(self) -> bool:
        """True when the decoder is HF ByteLevel (every token string is a run of byte stand-in characters)."""
        decoder = json.loads(self.to_json()).get("decoder") or {}
        return decoder.get("type") == "ByteLevel"

    def ids_to_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The raw bytes each id adds to decoded text: a byte-level token's stand-in characters mapped back to their
        bytes (possibly not UTF-8 on their own), else the token decoded; b"" for special tokens and unknown ids."""
        special_ids = set(self.special_tokens.values())
        char_to_byte = {c: b for b, c in bytes_to_unicode().items()} if self.is_byte_level() else None
        out = []
        for i in ids:
            token = None if i in special_ids else self.inner.id_to_token(i)
            if token is None:
                out.append(b"")
            elif char_to_byte is not None and all(c in char_to_byte for c in token):
                out.append(bytes(char_to_byte[c] for c in token))  # one stand-in character per byte
            else:
                out.append(self.decode([i]).encode("utf-8"))
        return out

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each token adds to decoded text; 0 for special tokens."""
        return np.array([len(b) for b in self.ids_to_bytes(range(self.vocab_size))], dtype=np.int64)

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (loadable by transformers)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = [t for t in self.special_tokens if t not in (self.bos_token, self.eos_token, self.pad_token)]
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            "chat_template": self.chat_template,
        }
        special_map = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "additional_special_tokens": extra,
        }
        atomic_write_text(directory / "tokenizer.json", self.to_json())
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")


def _rebuild(text: str, bos: str, eos: str, pad: str, chat_template: str | None) -> Tokenizer:
    return Tokenizer(
        HFTokenizer.from_str(text), bos_token=bos, eos_token=eos, pad_token=pad, chat_template=chat_template
    )


def _drop_template_post_processor(inner: HFTokenizer) -> None:
    """Remove post-processors that insert tokens (TemplateProcessing, BERT/Roberta); ByteLevel only trims offsets."""
    processor = json.loads(inner.to_str()).get("post_processor")
    if processor is not None and processor.get("type") != "ByteLevel":
        inner.post_processor = None


def wrap_hf_tokenizer(
    inner: HFTokenizer,
    *,
    config: dict | None = None,
    chat_template: str | None = None,
    extra_special_tokens: Sequence[str] = (),
) -> Tokenizer:
    """Resolve bos/eos/pad (config, then aliases, then added) and wrap `inner`.

    `config` is a parsed tokenizer_config.json (or special_tokens_map.json) of the source, if any. Tokens added here
    are appended as special tokens after the existing vocabulary, in a fixed order.
    """
    config = config or {}
    vocab_has = lambda tok: tok is not None and inner.token_to_id(tok) is not None  # noqa: E731

    def resolve(key: str, aliases: tuple[str, ...]) -> str | None:
        named = _config_token(config.get(key))
        if vocab_has(named):
            return named
        return next((a for a in aliases if vocab_has(a)), None)

    bos, eos, pad = (
        resolve("bos_token", _BOS_ALIASES),
        resolve("eos_token", _EOS_ALIASES),
        resolve("pad_token", _PAD_ALIASES),
    )
    if pad is None and eos is not None:
        pad = eos
    template = chat_template or config.get("chat_template")
    if isinstance(template, list):  # transformers' multi-template form: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    wanted = [bos or BOS, eos or EOS, pad or PAD]
    if not template:
        wanted += [IM_START, IM_END]
    wanted += list(extra_special_tokens)
    # Mark every wanted token special (existing ones keep their id, e.g. GPT-2's <|endoftext|> from vocab.json).
    to_add = []
    for tok in dict.fromkeys(wanted):
        added = inner.get_added_tokens_decoder().get(inner.token_to_id(tok)) if vocab_has(tok) else None
        if added is None or not added.special:
            to_add.append(AddedToken(tok, special=True, normalized=False))
    if to_add:
        inner.add_special_tokens(to_add)
    return Tokenizer(inner, bos_token=wanted[0], eos_token=wanted[1], pad_token=wanted[2], chat_template=template)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SlmError(f"{path}: unreadable tokenizer file ({e}); point to a valid tokenizer folder or file") from None
    if not isinstance(data, dict):
        raise SlmError(f"{path}: expected a JSON object; point to a valid tokenizer folder or file")
    return data


def _load_vocab_merges(folder: Path) -> HFTokenizer:
    """GPT-2-style folder (vocab.json + merges.txt): byte-level BPE like the original GPT-2 tokenizer."""
    from tokenizers import decoders, models, pre_tokenizers

    try:
        model = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    except Exception as e:  # tokenizers raises plain Exception on malformed files
        raise SlmError(f"{folder}: invalid vocab.json/merges.txt ({e}); point to a valid GPT-2-style folder") from None
    inner = HFTokenizer(model)
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return inner


def load_tokenizer(path: str | Path, *, extra_special_tokens: Sequence[str] = ()) -> Tokenizer:
    """Load a tokenizer.json file, a folder holding one (plus optional tokenizer_config.json), or vocab.json+merges.txt.

    bos/eos/pad and the chat template come from tokenizer_config.json (or special_tokens_map.json, or a
    chat_template.jinja file) when present; see `wrap_hf_tokenizer` for the fallbacks.
    """
    path = Path(path)
    if not path.exists():
        raise SlmError(f"{path}: tokenizer not found; pass a tokenizer.json file or a folder containing one")
    folder = path if path.is_dir() else path.parent
    config: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        if (folder / name).is_file():
            config.update(_read_json(folder / name))
    template_file = folder / "chat_template.jinja"
    chat_template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    json_file = path if path.is_file() else folder / "tokenizer.json"
    if json_file.is_file():
        try:
            inner = HFTokenizer.from_file(str(json_file))
        except Exception as e:  # tokenizers raises plain Exception on malformed files
            raise SlmError(f"{json_file}: not a valid tokenizer.json ({e}); re-save it with tokenizers") from None
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        inner = _load_vocab_merges(folder)
    else:
        raise SlmError(f"{path}: no tokenizer.json or vocab.json+merges.txt here; point to a tokenizer folder or file")
    return wrap_hf_tokenizer(
        inner, config=config, chat_template=chat_template, extra_special_tokens=extra_special_tokens
    )
