"""`data.source` + tokenizer -> a cached, prepared dataset of token shards.

Workers (one process per core) tokenize units — byte ranges of text files, row groups of parquet
files — and hand back token arrays in unit order, so the shards are the same bytes however many
workers ran. The dataset folder is named by a digest of the source fingerprint, the tokenizer and
the split, so a second prepare of the same data is a lookup, and any change prepares anew.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.chat_template import with_chat
from engine.contract import events as p
from engine.contract.errors import UsageError, on_disk
from engine.data import shards, sources, tokens
from engine.files import remove_stale_temps
from engine.tokenizer import Tokenizer, from_spec

Emit = Callable[[p.Event], None]


@dataclass
class Prepared:
    """A dataset ready for the loaders, with the tokenizer that cut it."""

    dataset: shards.Dataset
    tokenizer: Tokenizer
    cached: bool  # True when an earlier prepare's shards were reused

    @property
    def dir(self) -> Path:
        return self.dataset.dir

    @property
    def manifest(self) -> dict[str, Any]:
        return self.dataset.manifest


def dataset_dir(cfg: Any, source: sources.Source, tokenizer: Tokenizer) -> Path:
    key = {
        "format": shards.FORMAT,
        "source": source.fingerprint(),
        "tokenizer": tokens.canonical_spec(tokenizer.spec()),
        "val_fraction": cfg.data.val_fraction,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return shards.cache_root(cfg.data) / "datasets" / f"{source.label}-{digest}"


def prepare(
    cfg: Any,
    *,
    tokenizer: Tokenizer | None = None,
    emit: Emit | None = None,
    force: bool = False,
) -> Prepared:
    """Tokenize `cfg.data.source` into shards once; later calls return the cached dataset.

    `tokenizer` fixes the tokenizer (a resumed run keeps its checkpoint's); otherwise the config's
    is built or trained. `emit` receives `Progress` and `Log` events as the work goes on.
    """
    emit = emit or (lambda event: None)
    source = sources.resolve(cfg.data)
    if tokenizer is None:
        tokenizer = tokens.build_tokenizer_for(cfg, source, log=lambda text: emit(p.Log(text)))
    elif source.chat:  # a base model's tokenizer, fine-tuned on conversations
        tokenizer = with_chat(tokenizer)
    folder = dataset_dir(cfg, source, tokenizer)
    if not force and (found := shards.Dataset.open(folder)) is not None:
        emit(_ready(folder, found.manifest, cached=True))
        return Prepared(found, tokenizer, cached=True)

    manifest = _write(cfg, source, tokenizer, folder, emit)
    dataset = shards.Dataset.open(folder)
    assert dataset is not None, "a dataset just written must open"  # our bug otherwise
    emit(_ready(folder, manifest, cached=False))
    return Prepared(dataset, tokenizer, cached=False)


def _ready(folder: Path, manifest: dict[str, Any], cached: bool) -> p.DataReady:
    s = manifest["splits"]
    return p.DataReady(
        out_dir=str(folder),
        train_tokens=s["train"]["tokens"],
        val_tokens=s["val"]["tokens"],
        documents=s["train"]["documents"] + s["val"]["documents"],
        cached=cached,
        vocab_size=int(manifest.get("vocab_size", 0)),
    )


def _write(
    cfg: Any, source: sources.Source, tokenizer: Tokenizer, folder: Path, emit: Emit
) -> dict[str, Any]:
    units = source.units
    total = sum(u.size for u in units)
    typecode = tokens.typecode(tokenizer.vocab_size)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    for path, size in remove_stale_temps(folder.parent):  # a prepare killed before it finished
        emit(p.Log(f"removed {path} ({size:,} bytes), left by a data preparation that was "
                   "killed before it finished"))  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    with on_disk(tmp, "creating the dataset folder (data.cache_dir)"):
        tmp.mkdir(parents=True)
    started = time.perf_counter()
    writers = {split: shards.ShardWriter(tmp, split, typecode) for split in shards.SPLITS}
    masks = {s: shards.ShardWriter(tmp, s, "B", shards.MASK) for s in shards.SPLITS if source.chat}
    stats: dict[str, int] = {}
    done = n_tokens = 0
    workers = _worker_count(cfg.data.num_workers, len(units))
    emit(p.Progress(task="prepare", done=0, total=total, unit="B", tokens=0))
    try:
        for result in _encode_all(tokenizer, units, cfg.data.val_fraction, typecode, workers):
            writers["train"].write(result.train)
            writers["val"].write(result.val)
            if masks:
                assert result.train_mask is not None and result.val_mask is not None
                masks["train"].write(result.train_mask)
                masks["val"].write(result.val_mask)
            for k, v in result.stats.items():
                stats[k] = stats.get(k, 0) + v
            done += result.stats["bytes"]
            n_tokens += len(result.train) + len(result.val)
            emit(p.Progress(task="prepare", done=done, total=total, unit="B", tokens=n_tokens))
        for writer in (*writers.values(), *masks.values()):
            writer.close()
        if not writers["train"].tokens and not writers["val"].tokens:
            raise UsageError(
                f"data.source: {source.spec} holds no text (every document is empty); "
                "check data.text_column or the files"
            )
        manifest = {
            "format": shards.FORMAT,
            "source": source.spec,
            "fingerprint": source.fingerprint(),
            "files": len(source.files),
            "tokenizer": tokenizer.spec(),
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "dtype": shards.DTYPES[typecode],
            "val_fraction": cfg.data.val_fraction,
            "chat": source.chat,
            "bytes": stats.get("bytes", 0),
            "replaced_bytes": stats.get("replaced_bytes", 0),
            "empty_records": stats.get("empty", 0),
            "splits": {
                split: {
                    "tokens": writers[split].tokens,
                    "documents": stats.get(f"{split}_documents", 0),
                    "pieces": stats.get(f"{split}_pieces", 0),
                    "shards": writers[split].shards,
                    **({"masks": masks[split].shards} if masks else {}),
                }
                for split in shards.SPLITS
            },
            "workers": workers,
            "elapsed_s": round(time.perf_counter() - started, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        shards.atomic_write_json(tmp / shards.MANIFEST, manifest)
        if folder.exists():  # --force, or a stale folder from an older layout
            shutil.rmtree(folder)
        shards.publish(tmp, folder)
    finally:
        for writer in (*writers.values(), *masks.values()):
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if stats.get("skipped"):
        emit(p.Log(f"{stats['skipped']:,} conversations hold text the tokenizer cannot encode "
                   "and were left out", level="warning"))  # fmt: skip
    if manifest["replaced_bytes"]:
        emit(p.Log(f"{manifest['replaced_bytes']:,} bytes were not UTF-8 and became U+FFFD",
                   level="warning"))  # fmt: skip
    return manifest


def _worker_count(configured: int, n_units: int) -> int:
    return max(1, min(configured or os.cpu_count() or 1, n_units))


def _encode_all(
    tokenizer: Tokenizer, units: list[sources.Unit], val_fraction: float, typecode: str,
    workers: int,
) -> Iterator[tokens.UnitTokens]:  # fmt: skip
    """Each unit's tokens, in unit order, from `workers` processes (or this one)."""
    if workers == 1:
        for unit in units:
            yield tokens.encode_unit(tokenizer, unit, val_fraction, typecode)
        return
    # fork shares the parent's already-built tokenizer and imports for free; elsewhere, spawn.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer.spec(),)) as pool:
        jobs = ((unit, val_fraction, typecode) for unit in units)
        yield from pool.imap(_encode_job, jobs, chunksize=1)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(spec: dict[str, Any]) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker_tokenizer = from_spec(spec)


def _encode_job(job: tuple[sources.Unit, float, str]) -> tokens.UnitTokens:
    unit, val_fraction, typecode = job
    assert _worker_tokenizer is not None
    return tokens.encode_unit(_worker_tokenizer, unit, val_fraction, typecode)
