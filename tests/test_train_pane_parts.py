"""The Train pane's parts that need no app: the keys each state offers, the events that move it
on, and its own words for how a run ended."""

from __future__ import annotations

from engine.contract import events as p
from studio.jobs import Exit
from studio.panes.train.state import RunState, after, allows
from studio.panes.train.status import exit_lines, run_text

S = RunState


def test_each_state_offers_only_the_keys_that_make_sense_in_it():
    offered = {
        s: {a for a in ("start", "pause", "resume", "stop", "save") if allows(s, a)} for s in S
    }
    assert offered == {
        S.IDLE: {"start"},
        S.STARTING: set(),
        S.TRAINING: {"pause", "stop", "save"},
        S.PAUSED: {"resume", "stop", "save"},
        S.STOPPING: set(),
        S.FOLLOWING: set(),
    }
    assert all(allows(s, "log_scale") for s in S)  # the charts' keys work in every state


def test_the_runs_own_events_move_the_pane_from_state_to_state():
    start = p.Start(run="r", config={}, params=1, device="cpu", dtype="float32", max_steps=9,
                    tokens_per_step=1)  # fmt: skip
    assert after(S.STARTING, start) is S.TRAINING
    assert after(S.TRAINING, p.Paused(step=3)) is S.PAUSED
    assert after(S.PAUSED, p.Resumed(step=3)) is S.TRAINING
    assert after(S.FOLLOWING, p.Done(step=9, reason="finished")) is S.IDLE
    assert after(S.STOPPING, p.Paused(step=3)) is S.STOPPING  # a late pause changes nothing
    assert after(S.TRAINING, p.Done(step=9, reason="stopped")) is S.TRAINING  # the exit ends it


def test_an_ended_run_reads_as_how_it_ended():
    done = p.Done(step=9, reason="stopped")
    assert run_text("tiny", S.IDLE, done) == "tiny · stopped"
    assert run_text("tiny", S.TRAINING, None) == "tiny · training"
    assert exit_lines(Exit(code=0), done, 9) == [
        ("the engine exited cleanly (stopped at step 9)", False)
    ]
    failed = exit_lines(Exit(code=1, stderr=["boom"], ranks={1: "bad shard"}), None, 4)
    assert [error for _, error in failed] == [True, True, True]
    assert failed[1][0] == "  boom" and failed[2][0] == "rank 1 failed: bad shard"
