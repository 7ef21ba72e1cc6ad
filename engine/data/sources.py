"""Where text comes from: `data.source` resolved to files, work units and pieces of text.

A source is a built-in corpus, a text file, a folder (recursive, filtered by `data.include`), a
.jsonl file (one JSON object per line, text in `data.text_column`), a parquet file, or a glob of
any of these. Every source is planned as a list of `Unit`s, the pieces of work that processes
share: a byte range of a text or .jsonl file, or one row group of a parquet file. Units depend on
the files alone, never on how many workers read them, so every run cuts the same pieces.

Reading a unit yields `Piece`s, the grain of the train/validation split:
- a record (a .jsonl line or a parquet row) is one piece and one document;
- a text file is one document (or several, at literal "<|endoftext|>" markers, the usual way to
  keep documents in one file), cut into sections at line ends, so that even a single file yields
  a validation split. Sections are about 1/1024 of the file, from 1 KiB to 64 KiB.

A chat source (`data.format = "chat"`, or "auto" finding `messages` or `prompt`/`completion` in
the first record, or builtin:chat) reads each record as one conversation: the piece carries its
messages, and its text is their contents (what a char tokenizer must cover).

Bytes that are not UTF-8 become U+FFFD and are counted (`take_replaced`), never an error: one bad
byte in a 10 GB crawl must not stop a run, nor go unnoticed. pyarrow is imported only to read
parquet.
"""

from __future__ import annotations

import codecs
import functools
import glob
import hashlib
import itertools
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.chat_template import messages_of
from engine.contract.errors import UsageError
from engine.data import builtin, split

TEXT, JSONL, PARQUET = "text", "jsonl", "parquet"
EOT = builtin.EOT
UNIT_BYTES = 4 << 20  # text and .jsonl files are shared out in ranges of about this size
UNIT_WINDOW = 64 << 10  # how far past a range's nominal end to look for a line end
MIN_SECTION, MAX_SECTION = 1 << 10, 64 << 10
SECTIONS_PER_FILE = 1024
PARQUET_BATCH_ROWS = 1024
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z", ".lz4", ".tar")
_GLOB_CHARS = "*?["

# --- UTF-8 with counted replacements -------------------------------------------------------------

REPLACE = "gpt-studio-count-replace"
_replaced = threading.local()  # the streaming loader decodes on its own thread


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _replaced.n = getattr(_replaced, "n", 0) + (err.end - err.start)
    return "\ufffd", err.end


codecs.register_error(REPLACE, _count_and_replace)


def decode(data: bytes) -> str:
    """UTF-8 text, with each invalid byte sequence replaced by U+FFFD and counted."""
    return data.decode("utf-8", REPLACE)


def take_replaced() -> int:
    """Bytes replaced on this thread since the last call."""
    n = getattr(_replaced, "n", 0)
    _replaced.n = 0
    return n


# --- plan: source -> files -> units ---------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """What the user calls the settings that choose a source, for messages: config keys in a
    run, flags on a command line."""

    source: str = "data.source"
    include: str = "data.include"
    column: str = "data.text_column"


CONFIG_NAMES = Names()


@dataclass(frozen=True)
class FileRef:
    path: str
    kind: str  # text | jsonl | parquet
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Unit:
    """One piece of work: bytes [start, stop) of a text/.jsonl file, or parquet row group start."""

    kind: str
    path: str
    start: int
    stop: int
    size: int  # bytes of text it holds (parquet: the column's uncompressed size), for progress
    section: int = 0  # text: target section size
    last: bool = True  # text: the range ends its file, so its last section ends a document
    column: str = ""  # jsonl field / parquet column
    chat: bool = False  # records are conversations

    @property
    def markers(self) -> bool:
        """Whether a literal end-of-text marker in the text ends a document (text files only)."""
        return self.kind == TEXT


@dataclass(slots=True)
class Piece:
    text: str  # "" for an empty record, kept so that piece numbers match row numbers
    key: int  # split.key of its bytes
    end: bool  # a document ends after it
    size: int  # bytes it was read from
    messages: list[dict[str, str]] | None = None  # a conversation, from a chat source
    stored: int = 0  # bytes it took in the file, where that differs from `size` (a JSON line)


@dataclass
class Source:
    """A resolved `data.source`: what it names, how to fingerprint it, and its units."""

    spec: str
    text_column: str = "text"
    builtin: str = ""  # "prose", "code" or "chat" for a built-in corpus
    _files: tuple[FileRef, ...] | None = None
    names: Names = CONFIG_NAMES
    chat: bool = False  # records are conversations, tokenized through the chat template

    @property
    def files(self) -> tuple[FileRef, ...]:
        if self._files is None:  # built-in prose and chat are generated only when read
            kind = JSONL if self.builtin == "chat" else TEXT
            size = len(_builtin_bytes(f"builtin:{self.builtin}"))
            self._files = (FileRef(f"builtin:{self.builtin}", kind, size, 0),)
        return self._files

    @property
    def label(self) -> str:
        """A short name for folders and messages."""
        if self.builtin:
            return self.builtin
        stem = Path(self.spec.rstrip("/\\")).name
        for c in _GLOB_CHARS + "]":
            stem = stem.replace(c, "")
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
        return stem[:40] or "data"

    def fingerprint(self) -> str:
        """Changes whenever the text could have: any file added, removed, resized or rewritten."""
        if self.builtin:
            ident: Any = builtin.identity(self.builtin)
        else:
            ident = [[f.path, f.size, f.mtime_ns] for f in self.files]
        records = any(f.kind != TEXT for f in self.files) if not self.builtin else False
        body = {"files": ident, "text_column": self.text_column if records else None}
        if self.chat:
            body["chat"] = True
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]

    @functools.cached_property
    def units(self) -> list[Unit]:
        """Every unit of the source, in a fixed order; checks each file as it plans it."""
        units: list[Unit] = []
        for f in self.files:
            if f.kind == TEXT:
                units.extend(_text_units(f))
            elif f.kind == JSONL:
                units.extend(_jsonl_units(f, self.text_column, self.chat))
            else:
                units.extend(_parquet_units(f, self.text_column, self.names, self.chat))
        return units

    @property
    def total_bytes(self) -> int:
        return sum(u.size for u in self.units)


FORMATS = ("auto", "text", "chat")


def resolve(
    source: Any,
    *,
    text_column: str = "text",
    include: str = "*.txt",
    names: Names = CONFIG_NAMES,
    format: str = "auto",
) -> Source:
    """Resolve `data.source` (a string, or a DataConfig whose fields are used) to its files,
    and whether its records are conversations (`format`: auto, text or chat).

    Raises UsageError for a path that does not exist, a folder or glob with no matching files,
    compressed files, or a source with no bytes at all.
    """
    if not isinstance(source, str):  # a DataConfig
        text_column, include = source.text_column, source.include
        format = getattr(source, "format", "auto")
        source = source.source
    found = _resolve_files(source, text_column, include, names)
    found.chat = _is_chat(found, format, names)
    return found


def _is_chat(source: Source, format: str, names: Names) -> bool:
    """Whether the records are conversations: asked for, or (auto) seen in the first record."""
    if source.builtin:
        chat = source.builtin == "chat"
        if format != "auto" and chat != (format == "chat"):
            raise UsageError(
                f"data.format = {format!r} does not fit {source.spec}, which is "
                f"{'conversations' if chat else 'plain text'}; set data.format = 'auto'"
            )
        return chat
    if format == "text":
        return False
    first = source.files[0]
    looks = first.kind != TEXT and _looks_like_chat(first)
    if format == "chat":
        plain = next((f for f in source.files if f.kind == TEXT), None)
        if plain is not None:
            raise UsageError(
                f"data.format = 'chat': {plain.path} is plain text; conversations come as "
                ".jsonl or parquet records with 'messages' or 'prompt' and 'completion'"
            )
        return True
    return looks


def _looks_like_chat(f: FileRef) -> bool:
    if f.kind == PARQUET:
        columns = set(_open_parquet(f.path).schema_arrow.names)
        return "messages" in columns or {"prompt", "completion"} <= columns
    with open(f.path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(decode(line))
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and (
                    "messages" in record or {"prompt", "completion"} <= record.keys()
                )
    return False


def _resolve_files(source: str, text_column: str, include: str, names: Names) -> Source:
    spec = source.strip()
    if not spec:
        raise UsageError(f"{names.source} is empty; name a corpus, e.g. 'builtin:prose' or a path")
    if spec.startswith("builtin:"):
        name = builtin.check_name(spec.removeprefix("builtin:"), names.source)
        files = None
        if name == "code":
            files = tuple(_ref(p, names) for p in builtin.stdlib_files())
        return Source(spec, text_column, builtin=name, _files=files, names=names)

    path = Path(spec).expanduser()
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = sorted(p for p in path.rglob(include) if p.is_file())
        if not paths:
            raise UsageError(
                f"{names.source}: folder {path} has no files matching "
                + _include_hint(path, include, names.include)
            )
    elif path.exists():  # /dev/zero, a FIFO, a socket: reading it would never end or block
        raise UsageError(
            f"{names.source}: {spec} is not a regular file or folder (a device, pipe or socket); "
            "give a .txt, .jsonl or .parquet file, or a folder of them"
        )
    elif any(c in spec for c in _GLOB_CHARS):
        paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not paths:
            raise UsageError(f"{names.source}: the pattern {spec!r} matches no files")
    else:
        raise UsageError(
            f"{names.source}: {spec} does not exist; give a .txt, .jsonl or .parquet file, a folder, "
            f"a glob such as 'shards/*.parquet', or one of "
            + ", ".join(f"builtin:{n}" for n in builtin.NAMES)
        )
    files = tuple(_ref(p, names) for p in paths)
    if not any(f.size for f in files):
        raise UsageError(
            f"{names.source}: {spec} holds no text ({len(files)} empty file{'s' * (len(files) > 1)})"
        )
    return Source(spec, text_column, _files=files, names=names)


def _ref(path: Path, names: Names) -> FileRef:
    name = path.name.lower()
    if name.endswith(COMPRESSED_SUFFIXES):
        raise UsageError(
            f"{names.source}: {path} is compressed; decompress it first (text, .jsonl and parquet "
            "are read as they are)"
        )
    kind = (
        PARQUET
        if name.endswith(PARQUET_SUFFIXES)
        else JSONL
        if name.endswith(JSONL_SUFFIXES)
        else TEXT
    )
    st = path.stat()
    return FileRef(str(path.resolve()), kind, st.st_size, st.st_mtime_ns)


def _include_hint(folder: Path, include: str, name: str) -> str:
    """The include glob and what the folder does hold, so the fix is one edit away."""
    suffixes = Counter(p.suffix.lower() for p in folder.rglob("*") if p.is_file() and p.suffix)
    msg = f"{name} = {include!r}"
    if suffixes:
        held = ", ".join(f"{n} {s}" for s, n in suffixes.most_common(4))
        msg += f" (it holds {held} files; e.g. set {name} = '*{suffixes.most_common(1)[0][0]}')"
    return msg


def _builtin_bytes(path: str) -> bytes:
    return builtin.chat() if path == "builtin:chat" else builtin.prose()


def _read_range(path: str, start: int, stop: int) -> bytes:
    if path in ("builtin:prose", "builtin:chat"):
        return _builtin_bytes(path)[start:stop]
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def _cut(data: bytes, lo: int, hi: int) -> int:
    """Where to cut text at or after `lo`, looking up to `hi`: after a line end, else after a
    space, else before a character (never inside a UTF-8 sequence)."""
    i = data.find(b"\n", lo, hi)
    if i < 0:
        i = data.find(b" ", lo, hi)
    if i >= 0:
        return i + 1
    for j in range(lo, min(hi, lo + 4, len(data))):
        if data[j] & 0xC0 != 0x80:
            return j
    return lo


def section_size(file_size: int) -> int:
    return min(MAX_SECTION, max(MIN_SECTION, file_size // SECTIONS_PER_FILE))


def _text_units(f: FileRef) -> list[Unit]:
    cuts = [0]
    target = UNIT_BYTES
    while target < f.size:
        window = _read_range(f.path, target, target + UNIT_WINDOW)
        cut = target + _cut(window, 0, len(window))
        if cut < f.size:
            cuts.append(cut)
        target += UNIT_BYTES
    cuts.append(f.size)
    section = section_size(f.size)
    return [
        Unit(TEXT, f.path, a, b, b - a, section=section, last=b == f.size)
        for a, b in itertools.pairwise(cuts)
    ]


def _jsonl_units(f: FileRef, column: str, chat: bool = False) -> list[Unit]:
    """Ranges that end at line ends; a record is never cut, however long its line."""
    cuts = [0]
    if f.path == "builtin:chat":  # small, and generated: one unit
        return [Unit(JSONL, f.path, 0, f.size, f.size, column=column, chat=True)]
    with open(f.path, "rb") as fh:
        target = UNIT_BYTES
        while target < f.size:
            if target > cuts[-1]:
                fh.seek(target)
                pos, cut = target, f.size
                while chunk := fh.read(1 << 20):
                    i = chunk.find(b"\n")
                    if i >= 0:
                        cut = pos + i + 1
                        break
                    pos += len(chunk)
                if cut < f.size:
                    cuts.append(cut)
            target += UNIT_BYTES
    cuts.append(f.size)
    return [
        Unit(JSONL, f.path, a, b, b - a, column=column, chat=chat)
        for a, b in itertools.pairwise(cuts)
    ]


def _open_parquet(path: str, names: Names = CONFIG_NAMES) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # Buffered, without pre-buffering: pages stream in, a row group is never read whole.
        return pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowException, OSError) as err:
        raise UsageError(
            f"{names.source}: {path} is not a readable parquet file ({err}); replace or remove it"
        ) from None


def _parquet_units(f: FileRef, column: str, names: Names, chat: bool = False) -> list[Unit]:
    import pyarrow as pa

    pf = _open_parquet(f.path, names)
    schema = pf.schema_arrow
    if chat:
        if "messages" in schema.names:
            columns = ["messages"]
        elif {"prompt", "completion"} <= set(schema.names):
            columns = ["prompt", "completion"] + (["system"] if "system" in schema.names else [])
        else:
            raise UsageError(
                f"{names.source}: {f.path} has no 'messages' column nor 'prompt' and 'completion' "
                f"(columns: {', '.join(schema.names)}); chat data needs one of them"
            )
        md = pf.metadata
        return [
            Unit(PARQUET, f.path, i, i + 1, md.row_group(i).total_byte_size,
                 column=",".join(columns), chat=True)
            for i in range(md.num_row_groups)
            if md.row_group(i).num_rows
        ]  # fmt: skip
    if column not in schema.names:
        raise UsageError(
            f"{names.source}: {f.path} has no column {column!r} (columns: "
            f"{', '.join(schema.names)}); set {names.column} to the column that holds the text"
        )
    kind = schema.field(column).type
    texty = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
    )
    texty += tuple(
        getattr(pa.types, name)
        for name in ("is_string_view", "is_binary_view")
        if hasattr(pa.types, name)
    )
    if not any(test(kind) for test in texty):
        raise UsageError(
            f"{names.source}: column {column!r} of {f.path} holds {kind}, not text; "
            f"set {names.column} to a string column"
        )
    md = pf.metadata
    leaf = next((j for j in range(md.num_columns) if md.schema.column(j).path == column), None)
    units = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        if rg.num_rows:
            size = (
                rg.column(leaf).total_uncompressed_size if leaf is not None else rg.total_byte_size
            )
            units.append(Unit(PARQUET, f.path, i, i + 1, size, column=column))
    return units


# --- read: unit -> pieces -------------------------------------------------------------------------


def read(unit: Unit) -> Iterator[Piece]:
    """The pieces of one unit, in order. Non-UTF-8 bytes are counted on this thread."""
    if unit.kind == TEXT:
        return _read_text(unit)
    if unit.kind == JSONL:
        return _read_jsonl(unit)
    return _read_parquet(unit)


def _read_text(unit: Unit) -> Iterator[Piece]:
    data = _read_range(unit.path, unit.start, unit.stop)
    end, s = len(data), 0
    while s < end:
        target = s + unit.section
        cut = end if target >= end else _cut(data, target, min(end, target + unit.section))
        chunk = data[s:cut]
        yield Piece(decode(chunk), split.key(chunk), unit.last and cut == end, len(chunk))
        s = cut


def _record(text: str) -> Piece:
    if not text:
        return Piece("", 0, True, 0)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON escapes can spell
        text = decode(text.encode("utf-8", "surrogatepass"))
        raw = text.encode("utf-8")
    return Piece(text, split.key(raw), True, len(raw))


def _read_jsonl(unit: Unit) -> Iterator[Piece]:
    data = _read_range(unit.path, unit.start, unit.stop)
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(decode(line))
        except json.JSONDecodeError as err:
            raise UsageError(
                f"{_line(unit, i)}: not valid JSON ({err.msg}); each line of a .jsonl file must "
                "be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise UsageError(
                f"{_line(unit, i)}: a JSON {type(record).__name__}, not an object; each line of "
                f"a .jsonl file must be an object with a {unit.column!r} field"
            )
        if unit.column not in record and not unit.chat:
            fields = ", ".join(list(record)[:8]) or "none"
            raise UsageError(
                f"{_line(unit, i)}: no field {unit.column!r} (fields: {fields}); set "
                "data.text_column to the field that holds the text"
            )
        if unit.chat:
            yield _conversation(record, line, lambda i=i: _line(unit, i))
            continue
        text = record[unit.column]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise UsageError(
                f"{_line(unit, i)}: field {unit.column!r} is a {type(text).__name__}, not text"
            )
        piece = _record(text)
        piece.stored = len(line) + 1  # its key, quotes and escapes (\u00e9) too
        yield piece


def _conversation(record: dict[str, Any], raw: bytes, where: Any) -> Piece:
    """A conversation record as one piece; `where` names it in an error, computed only then."""
    try:
        messages = messages_of(record, "record")
    except UsageError as err:
        raise UsageError(f"{where()}: {str(err).removeprefix('record: ')}") from None
    if messages is None:
        fields = ", ".join(list(record)[:8]) or "none"
        raise UsageError(
            f"{where()}: no 'messages' nor 'prompt' and 'completion' (fields: {fields}); each "
            "chat record needs one of them"
        )
    text = "\n".join(m["content"] for m in messages)
    return Piece(text, split.key(raw), True, len(raw), messages)


def _line(unit: Unit, index: int) -> str:
    """'path:line' for an error: counting the lines before the range is paid only on failure."""
    before = _read_range(unit.path, 0, unit.start).count(b"\n") if unit.start else 0
    return f"{unit.path}:{before + index + 1}"


def _read_parquet(unit: Unit) -> Iterator[Piece]:
    import pyarrow as pa

    pf = _open_parquet(unit.path)
    columns = unit.column.split(",") if unit.chat else [unit.column]
    batches = pf.iter_batches(
        batch_size=PARQUET_BATCH_ROWS,
        row_groups=[unit.start],
        columns=columns,
        use_threads=False,
    )
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise UsageError(
                f"data.source: {unit.path}, row group {unit.start}, cannot be read ({err}); the "
                "file is truncated or corrupt: replace or remove it"
            ) from None
        if batch is None:
            return
        if unit.chat:
            for record in batch.to_pylist():
                row += 1
                raw = json.dumps(record, sort_keys=True, default=str).encode("utf-8")
                where = f"{unit.path}, row group {unit.start}, row {row}"
                yield _conversation(record, raw, lambda where=where: where)
            continue
        for value in batch.column(0).to_pylist():
            if isinstance(value, bytes):
                value = decode(value)
            yield _record(value or "")


def texts(source: Source) -> Iterator[str]:
    """Every piece of text in order: what a tokenizer trains on."""
    for unit in source.units:
        for piece in read(unit):
            if piece.text:
                yield piece.text


# --- inspect ----------------------------------------------------------------------------------------


def summary(
    source: Source, sample_bytes: int = 1 << 20, preview_chars: int = 400
) -> dict[str, Any]:
    """Documents, bytes, and estimates of the text's characters, UTF-8 bytes and tokens
    (cl100k_base) from a sample, with a preview.

    `bytes` is what the files hold; a JSON line or a parquet column stores more than its text, and
    a character of non-ASCII text takes 2 to 4 bytes, so each estimate scales the sample's own
    count by the file bytes the sample was read from, never by a fixed bytes-per-character.
    """
    units = source.units
    kinds = Counter(f.kind for f in source.files)
    documents = sum(_count_documents(f) for f in source.files)
    total = sum(u.size for u in units)
    # the sample: the start of up to 16 units spread over the source
    step = max(1, len(units) // 16)
    stored = text_bytes = chars = 0
    sample: list[str] = []
    for unit in units[::step]:
        taken = 0
        for piece in read(unit):
            taken += piece.stored or piece.size
            if piece.text:
                sample.append(piece.text)
                text_bytes += piece.size
                chars += len(piece.text)
            if taken >= sample_bytes // 16 + 1:
                break
        stored += taken
        if stored >= sample_bytes:
            break
    replaced = take_replaced()

    def scaled(count: int) -> int:
        return round(count / stored * total) if stored else 0

    preview = next((t for t in sample if t.strip()), "")[:preview_chars]
    return {
        "source": source.spec,
        "files": len(source.files),
        "kinds": dict(kinds),
        "documents": documents,
        "bytes": total,
        "text_bytes_estimate": scaled(text_bytes),
        "chars_estimate": scaled(chars),
        "tokens_estimate": scaled(_count_tokens(sample, text_bytes)),
        "replaced_in_sample": replaced,
        "preview": preview,
        "chat": source.chat,  # conversations (a loss on answers only), not plain text
    }


def _count_tokens(sample: list[str], text_bytes: int) -> int:
    try:
        from engine.tokenizer import TiktokenTokenizer

        return sum(len(ids) for ids in TiktokenTokenizer("cl100k_base").encode_batch(sample))
    except UsageError:  # no tiktoken encoding to hand: the usual ~4 bytes per token
        return text_bytes // 4


def _count_documents(f: FileRef) -> int:
    if f.kind == PARQUET:
        return _open_parquet(f.path).metadata.num_rows
    if f.path == "builtin:chat":
        return builtin.chat().count(b"\n")
    if f.kind == JSONL:
        with open(f.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    if not f.size:
        return 0
    marker, carry, n = EOT.encode(), b"", 1
    if f.path == "builtin:prose":
        return builtin.prose().count(marker) + 1
    with open(f.path, "rb") as fh:
        while block := fh.read(8 << 20):
            data = carry + block
            n += data.count(marker)
            carry = data[-(len(marker) - 1) :]  # too short to hold a whole marker
    return n
