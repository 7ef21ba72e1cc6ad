"""A prepared dataset on disk: token shards per split and the manifest that vouches for them.

Layout of one dataset folder, named by everything its tokens depend on:

    manifest.json        written last: source, fingerprint, tokenizer spec, counts, shard list
    train_000000.bin     raw little-endian uint16 (or uint32) token ids, SHARD_TOKENS at most
    val_000000.bin

A folder is trusted only through its manifest, and the manifest is the last thing written, into a
folder that is renamed into place whole. An interrupted prepare therefore leaves a temporary folder
that no later run reads; a shard whose size disagrees with the manifest is reported, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.contract.errors import UsageError
from engine.files import atomic_write_text

FORMAT = 1  # bump when the shard or manifest layout changes
SHARD_TOKENS = 100_000_000  # per shard file: a few hundred MB, easy to copy and to memory-map
SPLITS = ("train", "val")
DTYPES = {"H": "uint16", "I": "uint32"}
MANIFEST = "manifest.json"


def cache_root(data: Any = None) -> Path:
    """`data.cache_dir`, else $GPT_STUDIO_CACHE, else the user's cache folder."""
    configured = getattr(data, "cache_dir", "") if data is not None else ""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("GPT_STUDIO_CACHE"):
        return Path(os.environ["GPT_STUDIO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt-studio"


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1))


@dataclass
class Shard:
    path: Path
    tokens: int


class Dataset:
    """A prepared dataset folder read through its manifest."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.dir = folder
        self.manifest = manifest

    @classmethod
    def open(cls, folder: Path) -> Dataset | None:
        """The dataset in `folder`, or None when it was never completely prepared.

        A manifest that exists but whose shards are missing or the wrong size is corruption
        (a disk fault, a half copy), which is reported rather than silently prepared over.
        """
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return None
        data = cls(folder, manifest)
        data.check()
        return data

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "uint16" else 4

    def shards(self, split: str) -> list[Shard]:
        return [
            Shard(self.dir / s["file"], int(s["tokens"]))
            for s in self.manifest["splits"][split]["shards"]
        ]

    def tokens(self, split: str) -> int:
        return int(self.manifest["splits"][split]["tokens"])

    def check(self) -> None:
        for split in SPLITS:
            for shard in self.shards(split):
                expected = shard.tokens * self.itemsize
                try:
                    size = shard.path.stat().st_size
                except OSError:
                    size = -1
                if size != expected:
                    found = "is missing" if size < 0 else f"holds {size:,} bytes"
                    raise UsageError(
                        f"prepared data {shard.path} {found} but its manifest expects "
                        f"{expected:,}; delete {self.dir} (or run `python -m engine.data prepare "
                        "CONFIG --force`) to prepare it anew"
                    )


class ShardWriter:
    """Appends token arrays of one split to numbered shard files of at most SHARD_TOKENS."""

    def __init__(self, folder: Path, split: str, typecode: str) -> None:
        self.folder, self.split, self.typecode = folder, split, typecode
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._in_file = 0

    def write(self, tokens: array) -> None:
        start = 0
        while start < len(tokens):
            if self._file is None or self._in_file == SHARD_TOKENS:
                self._next_file()
            take = min(len(tokens) - start, SHARD_TOKENS - self._in_file)
            chunk = tokens[start : start + take]
            if sys.byteorder == "big":  # shards are little-endian
                chunk.byteswap()
            chunk.tofile(self._file)
            self._in_file += take
            self.shards[-1]["tokens"] = self._in_file
            start += take

    def _next_file(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 - closed by close()
        self._in_file = 0
        self.shards.append({"file": name, "tokens": 0})

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def publish(tmp: Path, final: Path) -> bool:
    """Move a finished temporary folder into place; False if another process got there first."""
    try:
        os.replace(tmp, final)
        return True
    except OSError:
        if (final / MANIFEST).is_file():  # a concurrent prepare of the same data finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        shutil.rmtree(final, ignore_errors=True)  # a stale, manifest-less folder
        os.replace(tmp, final)
        return True
