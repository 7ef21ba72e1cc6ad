"""Which split a piece of text belongs to: a keyed hash of its bytes, nothing else.

A hash of content (not a position, a counter or a random draw) makes the split a property of the
text itself: it is the same on every run, on every machine and for any number of workers; identical
text always lands on the same side, so the validation set never repeats training text; and raising
`val_fraction` only moves pieces into validation, never out of it.
"""

from __future__ import annotations

import hashlib

_PERSON = b"gpt-studio-val"  # a fixed salt: the split is unrelated to any other use of blake2b


def key(data: bytes) -> int:
    """A 64-bit key, uniform over [0, 2**64), for the bytes of one piece of text."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON).digest(), "little")


def threshold(val_fraction: float) -> int:
    """Keys below this go to validation: a share `val_fraction` of them."""
    return int(val_fraction * 2**64)


def is_val(piece_key: int, val_fraction: float) -> bool:
    return piece_key < threshold(val_fraction)
