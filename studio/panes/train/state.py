"""What the Train pane is doing, which keys make sense in each state, and which event moves it on.

The footer, the buttons and the command palette all ask `allows`; the pane moves from state to
state only through `after`, so the run's story is in one table rather than spread over handlers.
"""

from __future__ import annotations

from enum import Enum

from engine.contract import events as p


class RunState(Enum):
    IDLE = "idle"
    STARTING = "starting"
    TRAINING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"
    FOLLOWING = "following"


COMMANDING = frozenset({RunState.TRAINING, RunState.PAUSED})  # a run that takes commands
LIVE = COMMANDING | {RunState.FOLLOWING}  # a run whose ETA still means something

# the actions of the pane's keys and the states they are offered in; others always are
ALLOWED: dict[str, frozenset[RunState]] = {
    "start": frozenset({RunState.IDLE}),
    "pause": frozenset({RunState.TRAINING}),
    "resume": frozenset({RunState.PAUSED}),
    "stop": COMMANDING,
    "save": COMMANDING,
    "sample_now": COMMANDING,
}


def allows(state: RunState, action: str) -> bool:
    return action not in ALLOWED or state in ALLOWED[action]


def after(state: RunState, event: p.Event) -> RunState:
    """The state once `event` has been heard in `state`."""
    if isinstance(event, p.Start) and state is RunState.STARTING:
        return RunState.TRAINING
    if isinstance(event, p.Paused) and state is RunState.TRAINING:
        return RunState.PAUSED
    if isinstance(event, p.Resumed) and state is RunState.PAUSED:
        return RunState.TRAINING
    if isinstance(event, p.Done) and state is RunState.FOLLOWING:
        return RunState.IDLE  # nothing more will come: no longer following
    return state
