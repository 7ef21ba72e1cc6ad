"""How far the run has come: the part of the loop's state a resume continues from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)  # this session's logged means, not saved

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
