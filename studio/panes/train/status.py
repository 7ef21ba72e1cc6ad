"""What the Train pane says about its run in words: the status line, and how a run ended.

Pure functions of what the pane knows, so the wording is tested and changed in one place; the
lines of the run's own events are engine.contract.render's, shown by the RunView.
"""

from __future__ import annotations

from engine.contract import events as p
from studio.jobs import Exit
from studio.messages import ConfigState
from studio.panes.train.state import RunState


def ready_text(state: ConfigState | None) -> str:
    """Before any run: what `s` would start, or why it cannot (this line may wrap)."""
    if state is None:
        return "no config yet"
    if state.errors:
        return f"the config has {len(state.errors)} problem(s): fix them in the Config pane"
    c = state.config
    return (
        f"ready: {c.name} · {c.model.n_layer} layers × {c.model.n_embd} wide · "
        f"{c.train.max_steps} steps on {c.data.source} → {c.run_dir}  (press s to start)"
    )


def run_text(run_name: str, state: RunState, done: p.Done | None) -> str:
    """While events stream in: a short line of fixed size, so no relayout each time."""
    shown = done.reason if done is not None and state is RunState.IDLE else state.value
    return f"{run_name} · {shown}"


def refusal(errors: dict[str, str]) -> str:
    """The first fault that blocks a start, and how many more there are."""
    key, reason = next(iter(errors.items()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{key}: {reason}{more}"


def exit_lines(exit: Exit, done: p.Done | None, step: int) -> list[tuple[str, bool]]:
    """The log lines (text, is an error) for an engine that exited, cleanly or not."""
    if exit.code == 0:
        reason = done.reason if done is not None else "ended"
        return [(f"the engine exited cleanly ({reason} at step {step})", False)]
    lines = [(f"{exit.describe()}; the last lines it wrote:", True)]
    lines += [(f"  {line}", True) for line in exit.stderr]
    lines += [(f"rank {rank} failed: {error}", True) for rank, error in sorted(exit.ranks.items())]
    return lines


def detached_line(finished: bool, done: p.Done | None, where: object) -> tuple[str, bool]:
    """The log line (text, is an error) when an attached run's connection ends."""
    if finished and done is not None:
        return f"the run ended ({done.reason} at step {done.step})", False
    return f"lost the connection to the run; if it still trains: gpt-studio --attach {where}", True
