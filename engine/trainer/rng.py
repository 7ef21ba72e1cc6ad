"""Every random number generator a training step touches, seeded and saved as one part."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RngState:
    """Python's, NumPy's and torch's generators (and the training GPU's), as one part.

    Only the training GPU's CUDA generator: reading every visible GPU's would open a CUDA
    context on each of them from every process of a multi-GPU job.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors, so a weights_only load accepts them."""
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            if isinstance(state["cuda"], list):  # every GPU's, as checkpoints once held them
                torch.cuda.set_rng_state_all(state["cuda"])
            elif self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)
