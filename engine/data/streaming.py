"""Batches tokenized on the fly, for corpora too large to prepare first.

A background thread reads the source's units (text ranges, parquet row groups), tokenizes each
piece of the requested split and packs the tokens, documents back to back with end-of-text between
them, into rows of `block_size + 1`; consecutive rows share one token so none is lost as a target.

Each epoch visits the units in a seeded order; rank r of N takes every N-th unit of that order, so
no rank sees another's data (with fewer units than ranks, every N-th piece instead). The position
after each batch — epoch, unit, piece, and the tokens read but not yet used — travels with the
batch, so `state_dict()` names exactly what the trainer has consumed, however far the thread ran
ahead, and `load_state_dict()` continues with the very next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from engine.contract.errors import UsageError
from engine.data import sources, split, tokens
from engine.data.prefetch import Prefetch
from engine.tokenizer import Tokenizer


class StreamingLoader:
    def __init__(
        self,
        source: sources.Source,
        tokenizer: Tokenizer,
        split_name: str,
        batch_size: int,
        block_size: int,
        val_fraction: float,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        max_batches: int = 0,
    ) -> None:
        """`max_batches` > 0 makes a fixed evaluation set: the first batches, kept in memory."""
        self.source, self.tokenizer = source, tokenizer
        self.split = split_name
        self.batch_size, self.block_size = batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self._below = split.threshold(val_fraction)
        self._prefetch = max(1, prefetch)
        self._max_batches = max_batches
        self._fixed: list[torch.Tensor] | None = None
        self._fixed_at = 0
        self._state = {"epoch": 0, "unit": 0, "piece": 0, "carry": []}
        self._ahead: Prefetch[tuple[torch.Tensor, dict[str, Any]]] | None = None

    # --- what this rank reads -------------------------------------------------------------------

    def units_for(self, epoch: int) -> list[sources.Unit]:
        units = self.source.units
        if self.split != "train":
            return list(units)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
        shuffled = [units[i] for i in order]
        if len(units) >= self.world_size:
            return shuffled[self.rank :: self.world_size]
        return shuffled

    def _wanted(self, piece: sources.Piece) -> bool:
        if not piece.text or (piece.key < self._below) != (self.split == "val"):
            return False
        if self.split == "train" and len(self.source.units) < self.world_size:
            return (piece.key >> 32) % self.world_size == self.rank
        return True

    def _batches(self, state: dict[str, Any]) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """Batches from `state` on, each with the position just after it."""
        T, B = self.block_size, self.batch_size
        epoch, u, first_piece = state["epoch"], state["unit"], state["piece"]
        buf, pos = list(state["carry"]), 0
        rows: list[list[int]] = []
        while True:
            units = self.units_for(epoch)
            whole_epoch, made_rows = u == 0 and first_piece == 0, False
            while u < len(units):
                unit = units[u]
                for i, piece in enumerate(sources.read(unit)):
                    if i < first_piece or not self._wanted(piece):
                        continue
                    buf.extend(tokens.encode_piece(self.tokenizer, piece, unit.markers))
                    while len(buf) - pos >= T + 1:
                        rows.append(buf[pos : pos + T + 1])
                        pos += T
                        made_rows = True
                        if len(rows) == B:
                            del buf[:pos]
                            pos = 0
                            after = {"epoch": epoch, "unit": u, "piece": i + 1, "carry": list(buf)}
                            yield torch.tensor(rows, dtype=torch.long), after
                            rows = []
                    if pos > 1 << 16:
                        del buf[:pos]
                        pos = 0
                u, first_piece = u + 1, 0
            if whole_epoch and not made_rows:
                raise UsageError(
                    f"data.source: {self.source.spec} gives this process no {self.split} "
                    f"tokens to stream (it needs at least model.block_size + 1 = {T + 1}); use a "
                    "larger corpus"
                    + (", raise data.val_fraction" if self.split == "val" else "")
                    + " or a smaller model.block_size"
                )
            epoch, u = epoch + 1, 0

    # --- iteration ------------------------------------------------------------------------------

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._max_batches:
            batch = self._next_fixed()
        else:
            if self._ahead is None:
                self._ahead = Prefetch(self._batches(self._state), self._prefetch, "stream")
            try:
                batch, self._state = self._ahead.get()
            except BaseException:
                self._ahead = None
                raise
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def _next_fixed(self) -> torch.Tensor:
        if self._fixed is None:
            start = {"epoch": 0, "unit": 0, "piece": 0, "carry": []}
            made = self._batches(start)
            self._fixed = [next(made)[0] for _ in range(self._max_batches)]
        batch = self._fixed[self._fixed_at % len(self._fixed)]
        self._fixed_at += 1
        return batch

    def _halt(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    # --- position -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the first batch (the fixed evaluation set, or the start of the stream)."""
        self._halt()
        self._fixed_at = 0
        self._state = {"epoch": 0, "unit": 0, "piece": 0, "carry": []}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "streaming", "rank": self.rank, "world_size": self.world_size,
            **{k: (list(v) if k == "carry" else v) for k, v in self._state.items()},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "streaming":
            raise UsageError(
                "the checkpoint's data position is for prepared shards; resume with "
                "data.streaming = false, or start a fresh run"
            )
        if state.get("world_size", 1) != self.world_size:
            raise UsageError(
                f"the checkpoint streamed its data over {state.get('world_size')} processes and "
                f"this run has {self.world_size}; resume with the same number of processes "
                "(prepared shards, data.streaming = false, resume on any number)"
            )
        self._halt()
        self._state = {k: state[k] for k in ("epoch", "unit", "piece")}
        self._state["carry"] = [int(t) for t in state["carry"]]

    def close(self) -> None:
        self._halt()
