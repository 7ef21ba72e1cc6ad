"""Running an iterator on a thread a few items ahead, so the consumer never waits for it.

Both loaders use it: the shard loader to gather and pin batches while the GPU computes, the
streaming loader to tokenize while the model trains. An exception in the thread surfaces in the
consumer at the item where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    def __init__(self, items: Iterator[T], depth: int, name: str = "prefetch") -> None:
        self._queue: queue.Queue[T | BaseException] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            self._queue.put(err)

    def get(self) -> T:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread; items made ahead are dropped."""
        self._stop.set()
        self._thread.join()
