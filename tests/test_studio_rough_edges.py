"""Small things a new user hits: finding a field by name, asking the run for a sample now."""

from __future__ import annotations

import asyncio

import pytest
from studio_helpers import SIZE, RecordingApp, drive, fake_engine, small_run, until
from textual.pilot import Pilot

from studio.app import StudioApp
from studio.panes.config import find_field
from studio.panes.train import RunState
from studio.widgets.dialogs import ChoiceDialog, PathDialog

pytestmark = pytest.mark.usefixtures("engine_on_path")


def test_a_field_is_found_by_part_of_its_name():
    keys = ["name", "train.lr", "train.min_lr", "train.max_steps", "model.n_layer", "log.interval"]
    assert find_field(keys, "lr") == "train.lr"  # its own name, not min_lr
    assert find_field(keys, "max") == "train.max_steps"
    assert find_field(keys, "LAYER") == "model.n_layer"
    assert find_field(keys, "train.min_lr") == "train.min_lr"
    assert find_field(keys, "nothing like it") is None and find_field(keys, " ") is None


def test_f7_jumps_to_a_field_typed_by_name():
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, PathDialog), "the question")
        await pilot.press(*"max_st", "enter")
        row = app.config_pane.query_one("#field-train-max_steps")
        await until(pilot, lambda: app.focused is row.editor, "the cursor in train.max_steps")

    drive(test)


def test_n_asks_the_run_for_a_sample_now_and_shows_it_with_the_others(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t")
        assert not train.check_action("sample_now", ())  # no run to ask yet
        await pilot.press("s")
        await until(pilot, lambda: train.state is RunState.TRAINING and train.step, "steps")
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, PathDialog), "the prompt")
        await pilot.press(*"Once upon", "enter")
        shown = train.view.samples_text
        await until(pilot, lambda: "Once upon and so on" in str(shown.content), "the sample")
        assert "· 'Once upon'" in str(shown.content)
        assert not app.chat_pane.history  # it is the Train pane's, not a chat answer
        await pilot.press("x")
        await until(pilot, lambda: train.state is RunState.IDLE, "the stop")

    drive(test)


def test_a_config_bigger_than_the_machine_warns_with_both_figures_before_starting(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "studio.panes.train.starting.device_memory", lambda device: (1 << 20, "RAM")
    )

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the warning")
        question = app.screen.question
        assert "this machine has 1.0 MiB of RAM" in question or "1 MiB of RAM" in question
        assert "needs about" in question
        await pilot.press("escape")  # don't start
        await until(pilot, lambda: not isinstance(app.screen, ChoiceDialog), "the dialog to go")
        assert train.job is None and train.state is RunState.IDLE

    drive(test)


def test_the_last_valid_config_is_remembered_for_the_next_studio(tmp_path, monkeypatch):
    from engine.contract.config import load
    from engine.contract.errors import UsageError
    from studio.machine import last_config_path

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values({"train.max_steps": "4321"})
        await until(pilot, lambda: remembered() == 4321, "the config to be remembered")

    def remembered() -> int | None:
        try:
            return load(last_config_path()).train.max_steps
        except (OSError, ValueError, UsageError):  # not written yet
            return None

    drive(test)
    opened = []

    def run_headless(app: StudioApp) -> None:  # the studio `main` opens, as a test drives it
        async def look() -> None:
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.config is not None, "the config to be read")
                opened.append(app.config)

        asyncio.run(look())

    monkeypatch.setattr("studio.app.StudioApp.run", run_headless)
    from studio.app import main

    assert main([]) == 0
    state = opened[0]  # what the new studio's panes see
    assert state.config.train.max_steps == 4321 and state.source == str(last_config_path())


def test_answers_to_a_studios_questions_are_not_recorded_as_the_runs_samples(tmp_path):
    from engine import metrics
    from engine.contract import events as p

    sink = metrics.SamplesSink(tmp_path / "samples.txt")
    sink.write(p.Sample(step=10, prompt="The ", text="end", id=""))
    sink.write(p.Sample(step=11, prompt="my question ", text="answer", id="chat-1"))
    sink.close()
    text = (tmp_path / "samples.txt").read_text(encoding="utf-8")
    assert "The end" in text and "my question" not in text
