"""The studio driven as a person would: keys and clicks on the real app, real engine jobs.

Training runs here are real `python -m engine.train` subprocesses on a tiny model; the few
tests about the socket itself (junk lines, a crash, quitting) use tests/fake_engine.py, which
speaks the same protocol without torch, so they take a second rather than ten.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_until
from studio_helpers import RecordingApp, drive, fake_engine, log_text, small_run, until
from test_train import corpus, tiny_config
from textual.command import CommandList
from textual.pilot import Pilot
from textual.widgets import Static

from engine.contract import events as p
from engine.contract.sizing import padded_vocab
from studio.panes.chat import LIVE
from studio.panes.train import RunState
from studio.widgets.dialogs import ChoiceDialog
from studio.widgets.form import FieldRow
from studio.widgets.summary import ConfigSummary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("engine_on_path")


# --- training -----------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_trains_live_charts_samples_chat_pause_resume_and_stop(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        config = app.config_pane
        await pilot.press("f2")  # the Tiny preset
        assert config.source == "preset:tiny"
        config.set_values(small_run(tmp_path, **{"train.max_steps": "100000"}))
        assert config.is_valid, config.errors

        await pilot.press("ctrl+t", "s")
        train = app.train_pane
        charts = train.view.charts
        await until(pilot, lambda: train.state is RunState.TRAINING, "the run to start")
        await until(pilot, lambda: charts.chart("loss").series["val"].xs, "a validation point")
        assert charts.chart("loss").points >= 2 and charts.chart("speed").points >= 1
        shown = train.view.samples_text
        await until(pilot, lambda: "\nthe " in str(shown.content), "a live sample shown")
        assert train.view.samples[-1].prompt == "the "
        # samples are kept as they arrive and shown at the next flush: wait for it
        latest = lambda: f"step {train.view.samples[-1].step} · 'the '\nthe "  # noqa: E731
        await until(pilot, lambda: latest() in str(shown.content), "the latest sample shown")

        # talk to the model while it trains: the question goes over the socket as `sample`
        await pilot.press("ctrl+l")
        chat = app.chat_pane
        await until(pilot, lambda: any(v == LIVE for _, v in chat.choices), "the live model")
        chat.use(LIVE)
        await pilot.press(*"the ", "enter")
        await until(pilot, lambda: chat.history and chat.history[-1].done, "the live answer")
        answer = chat.history[-1]
        assert answer.note.startswith("live weights at step") and answer.prompt == "the "

        await pilot.press("ctrl+t", "p")
        await until(pilot, lambda: train.state is RunState.PAUSED, "the pause")
        # while paused the engine still obeys, but makes no step: two saves, one step
        checkpoints = []
        for _ in range(2):
            before = train.view.last(p.Checkpoint)
            await pilot.press("c")
            await until(pilot, lambda b=before: train.view.last(p.Checkpoint) is not b, "a save")
            checkpoints.append(train.view.last(p.Checkpoint).step)
        held = checkpoints[0]
        assert checkpoints == [held, held] and train.step <= held
        assert str(train.status.content).endswith("· paused")
        await pilot.press("p")
        await until(
            pilot, lambda: train.state is RunState.TRAINING and train.step > held, "steps again"
        )

        await pilot.press("x")
        await until(pilot, lambda: train.state is RunState.IDLE, "the run to end")
        assert train.last_exit is not None and train.last_exit.code == 0
        done = train.view.last(p.Done)
        assert done is not None and done.reason == "stopped"
        checkpoint = train.view.last(p.Checkpoint)
        assert Path(checkpoint.path).is_file() and checkpoint.step == done.step
        assert "the engine exited cleanly (stopped" in log_text(app)
        assert not train.notes  # nothing malformed came over the socket

    drive(test)


def test_an_invalid_field_shows_its_error_and_blocks_start(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        config = app.config_pane
        config.set_values(small_run(tmp_path, **{"model.n_embd": "30"}))
        await pilot.press("ctrl+t", "s")
        await pilot.pause()
        train = app.train_pane
        assert train.job is None and train.state is RunState.IDLE
        severity, message = app.notes[-1]
        assert severity == "error" and message.startswith("model.n_embd: 30 must be divisible")
        assert "cannot start: model.n_embd" in str(train.status.content)
        # the form is brought up with the cursor in the field at fault, its error beside it
        row = config.query_one("#field-model-n_embd", FieldRow)
        assert app.tabs.active == "config" and app.focused is row.editor
        assert "divisible by model.n_head = 4" in row.error
        assert not (tmp_path / "runs").exists()

    drive(test)


def test_an_engine_that_fails_is_reported_with_its_exit_code_and_stderr(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        missing = tmp_path / "no-such-corpus.txt"
        app.config_pane.set_values(small_run(tmp_path, **{"data.source": str(missing)}))
        await pilot.press("ctrl+t", "s")
        train = app.train_pane
        await until(pilot, lambda: train.last_exit is not None, "the engine to exit")
        assert train.last_exit.code == 2 and train.state is RunState.IDLE
        log = log_text(app)
        assert "the engine exited with code 2" in log
        assert f"error: data.source: {missing} does not exist" in log  # its stderr, shown
        severity, message = app.notes[-1]
        assert severity == "error" and message.startswith(f"data.source: {missing} does not")

    drive(test)


def test_an_engine_that_crashes_mid_run_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.last_exit is not None, "the crash")
        assert train.last_exit.code == 3 and train.step == 5, (train.last_exit, train.step)
        log = log_text(app)
        assert "the engine exited with code 3; the last lines it wrote:" in log
        assert "RuntimeError: the fake engine fell over" in log
        assert app.notes[-1][0] == "error" and "code 3" in app.notes[-1][1]

    drive(test)


def test_malformed_socket_messages_are_survived_and_logged(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "junk")

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step >= 20, "steps after the junk")
        assert len(train.notes) == 4 and train.state is RunState.TRAINING
        assert "not JSON" in train.notes[0] and "'launch'" in train.notes[1]
        assert any("byte limit" in note for note in train.notes)
        assert "dropped a message from the engine" in log_text(app)
        await pilot.press("x")
        await until(pilot, lambda: train.state is RunState.IDLE, "the stop")
        assert train.last_exit.code == 0

    drive(test)


def test_quitting_asks_and_can_leave_the_run_training_headless(tmp_path, monkeypatch):
    log = tmp_path / "headless.log"
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    procs = []

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step > 0, "steps")
        procs.append(train.job.proc)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.press("escape")  # "Don't quit": nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ChoiceDialog), "the dialog to go")
        assert train.state is RunState.TRAINING and app.is_running
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.click("#choice-leave")
        await until(pilot, lambda: not app.is_running, "the studio to quit")

    try:
        drive(test)
        proc = procs[0]

        def carried_on() -> bool:
            assert proc.poll() is None, "the engine died with the studio"
            return log.exists() and log.read_text().count("\n") >= 3

        wait_until(carried_on, 30, "the engine to carry on headless")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_quitting_can_stop_the_run_with_a_checkpoint(tmp_path):
    procs = []

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.config_pane.set_values(small_run(tmp_path))
        train = app.train_pane
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step > 0, "steps")
        procs.append(train.job.proc)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.press("enter")  # the first choice has the focus: stop it
        await until(pilot, lambda: not app.is_running, "the studio to quit")
        assert train.view.last(p.Checkpoint).path.startswith("fake/step_")

    drive(test)
    assert procs[0].wait(timeout=10) == 0


# --- runs on disk -------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_pane_lists_a_run_shows_its_curves_and_resumes_it(tmp_path):
    from engine.train import train as train_headless

    cfg = tiny_config(tmp_path, train__max_steps=30)
    train_headless(cfg, until=20, quiet=True)  # stopped at 20 of 30, as if by Ctrl-C

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        runs = app.runs_pane
        await pilot.press("ctrl+r")
        await until(pilot, lambda: runs.runs, "the run list")
        table = runs.table
        row = table.get_row_at(0)
        assert row[0] == "t" and row[2] == "20/30" and row[4] == "stopped"
        assert row[1] == "2L·32d·ctx32 char" and row[3] != "-"

        await pilot.press("enter")
        charts = runs.view.charts
        await until(pilot, lambda: charts.chart("loss").series["val"].xs, "the curves")
        assert charts.chart("loss").series["train"].xs[-1] == 20
        assert str(runs.view.samples_text.content).startswith("step 20 · ")

        await pilot.press("r")
        train = app.train_pane
        await until(pilot, lambda: train.last_exit is not None, "the resumed run to finish")
        assert train.last_exit.code == 0 and train.step == 30
        assert train.view.last(p.Start).resumed_from == 20
        assert app.config_pane.config.name == "t"

    drive(test, config=cfg)  # opened on the run's config, as `gpt-studio --config` would


def test_a_run_training_elsewhere_is_shown_so_and_never_resumed_a_second_time(tmp_path):
    from engine.contract.runlock import RunLock

    cfg = tiny_config(tmp_path, train__max_steps=30)
    run_dir = cfg.run_dir
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000010.pt").write_bytes(b"x")
    start = p.Start(run="t", config={}, params=1, device="cpu", dtype="float32", max_steps=30,
                    tokens_per_step=1)  # fmt: skip
    (run_dir / "metrics.jsonl").write_bytes(p.encode(start))

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        runs = app.runs_pane
        await pilot.press("ctrl+r")
        await until(pilot, lambda: runs.runs, "the run list")
        assert runs.table.get_row_at(0)[4] == "training"
        await pilot.press("r")
        await until(pilot, lambda: app.notes, "a note")
        assert "training elsewhere (process" in app.notes[-1][1]
        assert app.train_pane.job is None  # no second writer was started

    with RunLock(run_dir):  # a headless engine (here: this process) is writing the run
        drive(test, config=cfg)


def test_follow_shows_a_headless_run_from_its_growing_metrics(tmp_path):
    run_dir = tmp_path / "runs" / "server"
    run_dir.mkdir(parents=True)
    metrics = run_dir / "metrics.jsonl"
    start = p.Start(run="server", config={}, params=800_000, device="cpu", dtype="float32",
                    max_steps=100, tokens_per_step=2048)  # fmt: skip
    steps = [
        p.Step(step=s, loss=3.0 - s / 100, lr=1e-3, grad_norm=1.0, tokens_per_s=20000.0,
               step_ms=100.0, mfu=None, mem_gb=0.4, eta_s=10.0)
        for s in (10, 20, 30)
    ]  # fmt: skip
    third = p.encode(steps[2])
    metrics.write_bytes(p.encode(start) + p.encode(steps[0]) + p.encode(steps[1]) + third[:20])

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        train = app.train_pane
        assert app.tabs.active == "train" and train.state is RunState.FOLLOWING
        await until(pilot, lambda: train.step == 20, "the complete lines")
        follower = train.follower
        seen = follower.reads
        await until(pilot, lambda: follower.reads > seen + 1, "the file to be read again")
        assert train.step == 20 and follower.tail.offset == metrics.stat().st_size
        train.view.flush()
        assert train.view.charts.chart("loss").points == 2  # the torn line is held back
        with open(metrics, "ab") as f:
            f.write(third[20:])
        await until(pilot, lambda: train.step == 30, "the rest of the line")
        assert train.view.charts.chart("loss").points == 3
        assert not train.check_action("start", ()) and not train.check_action("stop", ())

    drive(test, follow=run_dir)


def test_follow_of_a_missing_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from studio.app import main

    assert main(["--follow", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --follow ") and err.count("\n") == 1


# --- data ---------------------------------------------------------------------------------


def test_dataset_choices_flow_into_the_config_and_prepare_shows_progress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the studio's working directory: paths are typed relative to it
    text = corpus(Path("notes.txt"), docs=200)

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        config = app.config_pane
        config.set_values({"data.cache_dir": str(tmp_path / "cache")})
        data = app.dataset_pane
        await pilot.press("ctrl+f")
        await pilot.press("ctrl+u", *str(text), "enter")  # typed into data.source
        await until(pilot, lambda: config.config.data.source == str(text), "the new source")
        await until(pilot, lambda: data.facts and data.facts["source"] == str(text), "a look")
        facts = str(data.facts_text.content)
        assert f"bytes       {text.stat().st_size:,}" in facts and "documents   1\n" in facts
        assert "about" in facts and str(data.preview.content)

        await pilot.press("f3")  # a built-in corpus, then a path that is not there
        assert config.config.data.source == "builtin:code"
        await pilot.press("ctrl+u", *"missing.txt", "enter")
        await until(pilot, lambda: data.inspect_error, "the bad source to be reported")
        assert "missing.txt does not exist" in data.source_row.error
        await pilot.press("ctrl+u", *str(text), "enter")
        await until(pilot, lambda: data.facts and not data.inspect_error, "a good source again")

        kind = data.kind_row
        kind.value = "bpe"
        await pilot.pause()
        assert config.config.tokenizer.kind == "bpe"
        vocab = data.vocab_row
        assert vocab.display
        vocab.editor.focus()
        await pilot.press("ctrl+u", *"10")
        assert "must be from" in vocab.error and not config.is_valid  # shown here and there
        assert "must be from" in config.query_one("#field-tokenizer-vocab_size", FieldRow).error
        await pilot.press("ctrl+u", *"300")
        assert config.is_valid and config.config.tokenizer.vocab_size == 300
        kind.editor.focus()
        kind.value = "char"
        await pilot.pause()

        await pilot.press("f5")
        bar = data.query_one("#data-progress")
        done = ("information", "The data is prepared; training will use the cached shards.")
        # the note comes when the process has exited, after its data-ready record
        await until(pilot, lambda: done in app.notes, "the prepare to finish")
        assert data.prepared
        assert bar.percentage == 1.0 and data.progress[0] == data.progress[1] > 0
        assert (tmp_path / "cache").is_dir()
        # the char vocabulary is known now: the Config pane stops saying "guess"
        assert data.ready is not None and 10 < data.ready.vocab_size < 200
        summary = config.query_one(ConfigSummary)
        # the vocabulary travels as a message, which may land after the note
        await until(pilot, lambda: not summary.figures["vocab_is_guess"], "the known vocabulary")
        figures = summary.figures
        assert figures["vocab_size"] == padded_vocab(data.ready.vocab_size)
        assert not figures["vocab_is_guess"]
        assert "guess" not in str(config.query_one("#summary-figures", Static).content)
        await pilot.press("f2")  # other data: a guess again until it is prepared
        assert config.query_one(ConfigSummary).figures["vocab_is_guess"]

    drive(test)


# --- chat ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_chat_streams_an_answer_from_a_checkpoint(tmp_path):
    from engine.train import train as train_headless

    cfg = tiny_config(tmp_path, train__max_steps=10)
    train_headless(cfg, quiet=True)

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        await pilot.press("ctrl+r")
        runs = app.runs_pane
        await until(pilot, lambda: runs.runs, "the run list")
        await pilot.press("c")  # chat with it: the Chat pane starts engine.generate --serve
        chat = app.chat_pane
        assert app.tabs.active == "chat" and chat.source == str(cfg.run_dir)
        await until(pilot, lambda: chat.ready is not None, "the model to load")
        assert chat.ready.step == 10
        settings = chat.setting("max_tokens")
        settings.editor.focus()
        await pilot.press("ctrl+u", *"40")
        chat.setting("temperature").editor.focus()
        await pilot.press("ctrl+u", *"9")
        assert "is not a number from 0" in chat.setting("temperature").error
        chat.prompt.focus()
        await pilot.press(*"the ", "enter")
        assert not chat.history  # refused: the temperature is out of range
        assert app.notes[-1] == (
            "error",
            "temperature: 9.0 is not a number from 0 to 5 (0: greedy)",
        )
        chat.setting("temperature").editor.focus()
        await pilot.press("ctrl+u", "0")  # greedy: a random draw could end the answer at once
        chat.prompt.focus()
        await pilot.press("enter")
        await until(pilot, lambda: chat.history and chat.history[-1].done, "the answer")
        answer = chat.history[-1]
        assert answer.prompt == "the " and answer.answer and answer.pieces >= 2  # streamed
        assert "tokens at" in answer.note
        await pilot.press(*"and ", "enter")  # a second turn in the same session
        await until(pilot, lambda: len(chat.history) == 2 and chat.history[-1].done, "turn 2")
        await pilot.press("ctrl+n")
        assert not chat.history

    drive(test, config=cfg)


# --- the frame ----------------------------------------------------------------------------


def test_every_pane_is_a_key_away_and_its_actions_are_in_the_palette():
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        for key, pane in [("ctrl+f", "dataset"), ("ctrl+t", "train"), ("ctrl+l", "chat"),
                          ("ctrl+r", "runs"), ("ctrl+g", "config")]:  # fmt: skip
            await pilot.press(key)
            assert app.tabs.active == pane
            assert any(a.id == pane for a in app.focused.ancestors_with_self)
        await pilot.press("ctrl+t")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Start", "Quit", "Train pane", "Runs pane"} <= titles
        assert "Pause" not in titles  # nothing to pause yet
        await pilot.press("ctrl+p", *"runs pane")
        matches = app.screen.query_one(CommandList)
        await until(pilot, lambda: matches.option_count, "the palette's matches")
        await pilot.press("enter")
        await until(pilot, lambda: app.tabs.active == "runs", "the Runs pane")

    drive(test)


def test_the_studio_process_never_loads_torch(tmp_path):
    script = tmp_path / "visit.py"
    script.write_text(
        "import asyncio, sys\n"
        "from studio.app import StudioApp\n"
        "async def main():\n"
        "    app = StudioApp()\n"
        "    async with app.run_test() as pilot:\n"
        "        for key in ('ctrl+f', 'ctrl+t', 'ctrl+l', 'ctrl+r', 'ctrl+g'):\n"
        "            await pilot.press(key)\n"
        "            await pilot.pause()\n"
        "        print('visited', app.tabs.active)\n"
        "asyncio.run(main())\n"
        "heavy = {'torch', 'tokenizers', 'pyarrow', 'tiktoken', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert out.stdout.split() == ["visited", "config"]
