"""Batches from prepared shards: random windows of `block_size + 1` tokens, memory-mapped.

Which window row j of the run reads is a pure function of (seed, split, j): a counter-based hash,
not a stateful generator. So the loader's whole position is one number, the next row; resuming
is exact; a prefetching thread can run ahead freely; and the rows of a global batch are the same
whether one process reads them all or N ranks read a slice each (rank r of N takes rows
[r·B, (r+1)·B) of every global batch of N·B rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from engine.contract.errors import UsageError
from engine.data.prefetch import Prefetch
from engine.data.shards import Dataset

_SPLIT_SALT = {"train": 0x9E3779B97F4A7C15, "val": 0xC2B2AE3D27D4EB4F}
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment: consecutive rows land far apart


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scrambles consecutive counters."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ShardLoader:
    """Random windows from the memory-mapped shards of one split, as (x, y) token batches.

    On CUDA a thread builds batches ahead into pinned memory and the copy to the GPU is
    non-blocking, so the GPU never waits for data; on a CPU the batch is built on demand, which
    costs microseconds against a step of milliseconds and leaves the cores to the model.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        prefetch: int | None = None,
    ) -> None:
        self.batch_size, self.block_size = batch_size, block_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.split = split
        width = block_size + 1
        self._maps = []
        windows = []
        for shard in dataset.shards(split):
            if shard.tokens >= width:
                self._maps.append(np.memmap(shard.path, dtype=dataset.dtype, mode="r"))
                windows.append(shard.tokens - width + 1)
        if not windows:
            raise UsageError(
                f"the {split} split of {dataset.manifest['source']} holds "
                f"{dataset.tokens(split):,} tokens, fewer than model.block_size + 1 = {width}; "
                + (
                    "raise data.val_fraction, "
                    if split == "val"
                    else "use a larger corpus, lower data.val_fraction, "
                )
                + "or lower model.block_size"
            )
        self._ends = np.cumsum(np.array(windows, dtype=np.int64))
        self._total_windows = int(self._ends[-1])
        self._key = np.uint64((seed * 0x2545F4914F6CDD1D + _SPLIT_SALT[split]) % 2**64)
        self._offsets = np.arange(width, dtype=np.int64)
        self.row = 0  # the next global row: the loader's whole position
        if prefetch is None:
            prefetch = 2 if self.device.type == "cuda" else 0
        self._prefetch = prefetch
        self._ahead: Prefetch[torch.Tensor] | None = None

    # --- which tokens ---------------------------------------------------------------------------

    def windows(self, rows: np.ndarray) -> np.ndarray:
        """The (shard, start) of each global row: a hash of the row number, nothing else."""
        with np.errstate(over="ignore"):
            h = _mix(rows.astype(np.uint64) * _GAMMA + self._key)
        index = (h % np.uint64(self._total_windows)).astype(np.int64)
        shard = np.searchsorted(self._ends, index, side="right")
        start = index - np.where(shard > 0, self._ends[shard - 1], 0)
        return np.stack([shard, start], axis=1)

    def _batch_at(self, row: int) -> torch.Tensor:
        """This rank's rows of the global batch that starts at `row`, as int64 (B, T + 1)."""
        first = row + self.rank * self.batch_size
        where = self.windows(np.arange(first, first + self.batch_size, dtype=np.int64))
        out = np.empty((self.batch_size, self.block_size + 1), dtype=np.int64)
        for i, (shard, start) in enumerate(where):
            out[i] = self._maps[shard][start : start + self.block_size + 1]
        batch = torch.from_numpy(out)
        return batch.pin_memory() if self.device.type == "cuda" else batch

    # --- iteration ------------------------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._prefetch:
            batch = self._batch_at(self.row)
        else:
            if self._ahead is None:
                self._ahead = Prefetch(self._batches(self.row), self._prefetch, "shard-prefetch")
            batch = self._ahead.get()
        self.row += self.global_batch
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def _batches(self, row: int) -> Iterator[torch.Tensor]:
        while True:
            yield self._batch_at(row)
            row += self.global_batch

    def _halt(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    # --- position -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the first batch: evaluation reads the same batches every time."""
        self._halt()
        self.row = 0

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "shards", "row": self.row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "shards":
            raise UsageError(
                "the checkpoint's data position is for a streaming loader; resume with "
                "data.streaming = true, or start a fresh run"
            )
        self._halt()
        self.row = int(state["row"])

    def close(self) -> None:
        self._halt()
