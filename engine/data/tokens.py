"""The tokenizer a dataset is cut with, and the pieces of one unit turned into token arrays.

`prepare`'s workers and the streaming loader both go through here, so a piece gets the same
tokens and the same end-of-text token whichever path reads it.

A char vocabulary must hold every character of the corpus (an unseen one cannot be encoded), so
it is learned from all of it; BPE encodes any byte, so it learns from a bounded sample of the
training split. Either trained tokenizer is cached by source fingerprint, so only the first run
pays for training.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contract.errors import UsageError
from engine.data import shards, sources, split
from engine.files import atomic_write_text
from engine.tokenizer import EOT, Tokenizer, build_tokenizer, from_spec

BPE_SAMPLE_BYTES = 64 << 20  # BPE merges are learned from at most this much training text
RUN_CHARS = 1 << 20  # consecutive text sections are encoded together up to this size


def identity(cfg: Any, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """What the dataset's tokens depend on, known before any tokenizer is built or trained."""
    if tokenizer is not None:
        return {"spec": _digest(canonical_spec(tokenizer.spec()))}
    tok = cfg.tokenizer
    if tok.kind == "tiktoken":
        return {"kind": "tiktoken", "name": tok.name}
    if tok.path:
        path = Path(tok.path).expanduser()
        if not path.is_file():
            raise UsageError(f"tokenizer.path: {tok.path} is not a file; give a saved tokenizer")
        return {"kind": tok.kind, "file": hashlib.sha256(path.read_bytes()).hexdigest()}
    if tok.kind == "bpe":  # trained on the training split, so the split is part of it
        return {"kind": "bpe", "vocab_size": tok.vocab_size, "val_fraction": cfg.data.val_fraction}
    return {"kind": tok.kind}


def build_tokenizer_for(
    cfg: Any, source: sources.Source | None = None, log: Callable[[str], None] | None = None
) -> Tokenizer:
    """The tokenizer `cfg.tokenizer` asks for: by name or path, or trained on `cfg.data.source`
    (`log` hears when training starts: it can take a while on a large corpus)."""
    tok = cfg.tokenizer
    if tok.kind == "tiktoken" or tok.path:
        return build_tokenizer(tok.kind, name=tok.name, vocab_size=tok.vocab_size, path=tok.path)
    source = source or sources.resolve(cfg.data)
    key = _digest({"source": source.fingerprint(), **identity(cfg), "sample": BPE_SAMPLE_BYTES})
    cached = shards.cache_root(cfg.data) / "tokenizers" / f"{source.label}-{tok.kind}-{key}.json"
    if cached.is_file():
        try:
            return from_spec(json.loads(cached.read_text(encoding="utf-8")))
        except (ValueError, UsageError):
            pass  # a damaged cache entry is only a cache miss: train again and overwrite it
    if log is not None:
        log(f"training a {tok.kind} tokenizer on {source.spec}")
    texts = _NonEmpty(_training_texts(source, tok.kind, cfg.data.val_fraction))
    if not texts.any():
        raise UsageError(f"data.source: {source.spec} holds no text to train a tokenizer on")
    trained = build_tokenizer(tok.kind, vocab_size=tok.vocab_size, texts=texts)
    atomic_write_text(cached, json.dumps(trained.spec()))
    return trained


class _NonEmpty:
    """Texts passed through once; `any` looks at the first without losing it, so an empty corpus
    gets a message naming the source rather than the tokenizer's."""

    def __init__(self, texts: Iterator[str]) -> None:
        self._texts, self._head = texts, None

    def any(self) -> bool:
        if self._head is None:
            self._head = next(self._texts, "")
        return bool(self._head)

    def __iter__(self) -> Iterator[str]:
        if self.any():
            yield self._head  # type: ignore[misc]
        yield from self._texts


def _training_texts(source: sources.Source, kind: str, val_fraction: float) -> Iterator[str]:
    if kind == "char":  # everything, validation included
        yield from sources.texts(source)
        return
    below, taken = split.threshold(val_fraction), 0
    for unit in source.units:
        for piece in sources.read(unit):
            if piece.text and piece.key >= below:
                yield piece.text
                taken += len(piece.text)
                if taken >= BPE_SAMPLE_BYTES:
                    return


def canonical_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec in a form that compares equal however the tokenizer was built (BPE's JSON parsed)."""
    if spec.get("kind") == "bpe" and isinstance(spec.get("json"), str):
        return {**spec, "json": json.loads(spec["json"])}
    return spec


def same_tokenizer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return canonical_spec(a) == canonical_spec(b)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# --- encoding ------------------------------------------------------------------------------------


def encode_piece(tokenizer: Tokenizer, piece: sources.Piece, markers: bool) -> list[int]:
    """A piece's tokens, with the end-of-text token after it when a document ends there."""
    ids = tokenizer.encode(piece.text, allow_special=markers)
    if piece.end:
        ids.append(tokenizer.eot_id)
    return ids


@dataclass
class UnitTokens:
    """A unit's tokens by split, and what was counted on the way."""

    train: array
    val: array
    stats: dict[str, int] = field(default_factory=dict)


def encode_unit(
    tokenizer: Tokenizer, unit: sources.Unit, val_fraction: float, typecode: str
) -> UnitTokens:
    """Tokenize one unit into a train and a val array of `typecode` ('H' uint16, 'I' uint32).

    Consecutive text sections on the same side of the split are encoded as one string: a call per
    1 KiB section would cost tiktoken a fifth of its speed. Records are encoded one by one.
    """
    below = split.threshold(val_fraction)
    out = {False: array(typecode), True: array(typecode)}
    stats = dict.fromkeys(
        ("bytes", "train_documents", "val_documents", "train_pieces", "val_pieces", "empty"), 0
    )
    eot = tokenizer.eot_id
    run: list[str] = []
    run_val, run_chars = False, 0

    def flush(ends_document: bool) -> None:
        nonlocal run, run_chars
        text = "".join(run)
        out[run_val].extend(tokenizer.encode(text, allow_special=True))
        documents = text.count(EOT) + ends_document
        if ends_document:
            out[run_val].append(eot)
        stats["val_documents" if run_val else "train_documents"] += documents
        run, run_chars = [], 0

    sources.take_replaced()
    for piece in sources.read(unit):
        stats["bytes"] += piece.size
        if not piece.text:
            stats["empty"] += 1
            continue
        is_val = piece.key < below
        stats["val_pieces" if is_val else "train_pieces"] += 1
        if unit.markers:
            if run and (is_val != run_val or run_chars >= RUN_CHARS):
                flush(False)
            run.append(piece.text)
            run_val, run_chars = is_val, run_chars + len(piece.text)
            if piece.end:
                flush(True)
        else:
            out[is_val].extend(tokenizer.encode(piece.text))
            out[is_val].append(eot)
            stats["val_documents" if is_val else "train_documents"] += 1
    if run:
        flush(False)
    stats["replaced_bytes"] = sources.take_replaced()
    return UnitTokens(out[False], out[True], stats)


def typecode(vocab_size: int) -> str:
    """uint16 when every id fits, else uint32: half the disk and page cache for most vocabularies."""
    return "H" if vocab_size <= 1 << 16 else "I"
