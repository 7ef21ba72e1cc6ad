"""How long the rest of a run will take, from what its steps and its pauses for work cost so far.

Two things made the first estimate wrong by several times. The first step of a session pays for
allocations, first kernel launches and (with train.compile) compilation, so a window that
includes it is far slower than the steps that follow: it is left out of the step time once any
other step is measured. And the evaluations, samples and saves still due take time too: each
kind is counted by how often the run will do it, at what it last took (an evaluation not yet
measured is guessed from the step time: forward passes only, about a third of a step each).

Pure Python and driven by a clock the caller passes, so a test can replay any timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def due(step: int, max_steps: int, interval: int) -> int:
    """How many times work done every `interval` steps (and always at the last step) is still
    to be done after `step`."""
    if step >= max_steps:
        return 0
    return max_steps // interval - step // interval + (1 if max_steps % interval else 0)


@dataclass
class Eta:
    """`intervals`: each kind of work between steps ("eval", "sample", "save") and how often it
    comes; `guess_steps`: a kind's cost, in steps, until it has been measured once."""

    max_steps: int
    intervals: dict[str, int] = field(default_factory=dict)
    guess_steps: dict[str, float] = field(default_factory=dict)
    first_step_s: float | None = None  # this session's first step, left out once others exist
    steps: int = 0
    steps_s: float = 0.0
    took: dict[str, float] = field(default_factory=dict)  # the last duration of each kind

    def step(self, seconds: float) -> None:
        if self.first_step_s is None:
            self.first_step_s = seconds
        else:
            self.steps, self.steps_s = self.steps + 1, self.steps_s + seconds

    def extra(self, kind: str, seconds: float) -> None:
        self.took[kind] = seconds

    @property
    def step_s(self) -> float | None:
        """The time a step takes once warm: the mean of the session's steps after its first."""
        if self.steps:
            return self.steps_s / self.steps
        return self.first_step_s

    def remaining(self, step: int) -> float | None:
        """Seconds from the end of `step` to the end of the run; None before any step."""
        step_s = self.step_s
        if step_s is None:
            return None
        left = (self.max_steps - step) * step_s
        for kind, interval in self.intervals.items():
            each = self.took.get(kind, self.guess_steps.get(kind, 0.0) * step_s)
            left += due(step, self.max_steps, interval) * each
        return left
