"""The data pipeline: sources -> prepare (token shards + manifest) -> loaders.

    sources.py    what `data.source` names, planned as units of work, read as pieces of text
    split.py      which pieces are validation: a keyed hash of their bytes
    tokens.py     the tokenizer a dataset is cut with, and a unit turned into token arrays
    shards.py     the dataset on disk: shards, manifest, cache folder
    prepare.py    workers tokenizing units into a cached dataset
    loaders.py    random windows from memory-mapped shards
    streaming.py  tokenizing on the fly for corpora too large to prepare

torch is imported only by the loaders, so `python -m engine.data inspect` starts quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.data.prepare import Prepared, prepare
from engine.data.sources import resolve
from engine.data.tokens import build_tokenizer_for

if TYPE_CHECKING:
    import torch

    from engine.data.loaders import ShardLoader
    from engine.data.streaming import StreamingLoader
    from engine.tokenizer import Tokenizer

__all__ = [
    "Prepared", "ShardLoader", "StreamingLoader", "build_tokenizer_for", "make_loaders",
    "prepare", "resolve",
]  # fmt: skip


def make_loaders(
    cfg: Any,
    prepared: Prepared | None,
    tokenizer: Tokenizer,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> tuple[ShardLoader | StreamingLoader, ShardLoader | StreamingLoader]:
    """The training and validation loaders a config asks for: from prepared shards, or
    streaming when `data.streaming` is on (then `prepared` is None)."""
    t, block = cfg.train, cfg.model.block_size
    if prepared is not None:
        from engine.data.loaders import ShardLoader

        common = {"batch_size": t.batch_size, "block_size": block, "seed": t.seed, "device": device}
        train = ShardLoader(prepared.dataset, "train", rank=rank, world_size=world_size, **common)
        val = ShardLoader(prepared.dataset, "val", **common) if cfg.data.val_fraction else None
        return train, val
    from engine.data.streaming import StreamingLoader

    source = resolve(cfg.data)
    if source.chat:
        from engine.contract.errors import UsageError

        raise UsageError(
            f"data.streaming: {source.spec} is chat data, which is prepared, not streamed; set "
            "data.streaming = false"
        )
    common = {
        "batch_size": t.batch_size, "block_size": block, "val_fraction": cfg.data.val_fraction,
        "seed": t.seed, "device": device,
    }  # fmt: skip
    train = StreamingLoader(source, tokenizer, "train", rank=rank, world_size=world_size, **common)
    val = None
    if cfg.data.val_fraction:
        val = StreamingLoader(source, tokenizer, "val", max_batches=t.eval_steps, **common)
    return train, val


def __getattr__(name: str) -> Any:
    if name == "ShardLoader":
        from engine.data.loaders import ShardLoader

        return ShardLoader
    if name == "StreamingLoader":
        from engine.data.streaming import StreamingLoader

        return StreamingLoader
    raise AttributeError(f"module 'engine.data' has no attribute {name!r}")
