"""The studio driven as a person would: keys and clicks on the real app, real engine jobs.

Training runs here are real `python -m engine.train` subprocesses on a tiny model; the few
tests about the socket itself (junk lines, a crash, quitting) use tests/fake_engine.py, which
speaks the same protocol without torch, so they take a second rather than ten.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_train import corpus, tiny_config
from textual.pilot import Pilot
from textual.widgets import DataTable, Static, TabbedContent

from engine.contract import events as p
from studio.app import StudioApp
from studio.panes.chat import LIVE, ChatPane
from studio.panes.config import ConfigPane
from studio.panes.dataset import DatasetPane
from studio.panes.runs import RunsPane
from studio.panes.train import FOLLOWING, IDLE, PAUSED, TRAINING, TrainPane
from studio.widgets.charts import RunCharts
from studio.widgets.dialogs import ChoiceDialog
from studio.widgets.form import FieldRow

ROOT = Path(__file__).resolve().parent.parent
FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"
SIZE = (120, 40)


@pytest.fixture(autouse=True)
def engine_on_path(monkeypatch):
    """Engine subprocesses import this checkout's engine, whatever is installed."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


class RecordingApp(StudioApp):
    """The studio, noting what it tells the user."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: str = "information", **kwargs) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kwargs)


def drive(test: Callable[[RecordingApp, Pilot], Awaitable[None]], **app_kw) -> None:
    async def run() -> None:
        app = RecordingApp(**app_kw)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            try:
                await test(app, pilot)
            finally:  # a failed test must not leave its engine training headless
                job = app.query_one(TrainPane).job
                if job is not None and job.running:
                    job.kill()

    asyncio.run(run())


async def until(pilot: Pilot, predicate: Callable[[], object], what: str, timeout=90.0) -> None:
    """Let the app run until `predicate` holds; the test fails naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def small_run(tmp_path: Path, **values: str) -> dict[str, str]:
    """Form entries that shrink the Tiny preset to a run of seconds on a small corpus."""
    text = corpus(tmp_path / "corpus.txt")
    return {
        "out_dir": str(tmp_path / "runs"),
        "model.n_layer": "2",
        "model.n_embd": "32",
        "model.block_size": "32",
        "data.source": str(text),
        "data.val_fraction": "0.1",
        "data.cache_dir": str(tmp_path / "cache"),
        "train.device": "cpu",
        "train.batch_size": "8",
        "train.warmup_steps": "5",
        "train.eval_interval": "20",
        "train.eval_steps": "2",
        "train.sample_interval": "20",
        "train.sample_prompts": '["the "]',
        "train.sample_tokens": "16",
        "log.interval": "5",
        **values,
    }


def log_text(app: StudioApp) -> str:
    return "\n".join(app.query_one(TrainPane).log_lines)


def fake_engine(pane: TrainPane) -> None:
    pane.engine_command = lambda args: [sys.executable, str(FAKE_ENGINE), *args]


# --- training -----------------------------------------------------------------------------


def test_tiny_trains_live_charts_samples_chat_pause_resume_and_stop(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        config = app.query_one(ConfigPane)
        await pilot.press("f2")  # the Tiny preset
        assert config.source == "preset:tiny"
        config.set_values(small_run(tmp_path, **{"train.max_steps": "100000"}))
        assert config.is_valid, config.errors

        await pilot.press("ctrl+t", "s")
        train = app.query_one(TrainPane)
        charts = train.query_one(RunCharts)
        await until(pilot, lambda: train.state == TRAINING, "the run to start")
        await until(pilot, lambda: charts.chart("loss").series["val"].xs, "a validation point")
        assert charts.chart("loss").points >= 2 and charts.chart("speed").points >= 1
        await until(pilot, lambda: train.samples, "a live sample")
        assert train.samples[-1].prompt == "the "
        shown = str(train.query_one("#train-samples", Static).content)
        assert f"step {train.samples[-1].step} · 'the '\nthe " in shown

        # talk to the model while it trains: the question goes over the socket as `sample`
        await pilot.press("ctrl+l")
        chat = app.query_one(ChatPane)
        await until(pilot, lambda: any(v == LIVE for _, v in chat._choices), "the live model")
        chat.use(LIVE)
        await pilot.press(*"the ", "enter")
        await until(pilot, lambda: chat.history and chat.history[-1].done, "the live answer")
        answer = chat.history[-1]
        assert answer.note.startswith("live weights at step") and answer.prompt == "the "

        await pilot.press("ctrl+t", "p")
        await until(pilot, lambda: train.state == PAUSED, "the pause")
        held = train.step
        await pilot.pause(0.5)
        assert train.step == held  # no steps while paused
        await pilot.press("p")
        await until(pilot, lambda: train.state == TRAINING and train.step > held, "steps again")

        await pilot.press("x")
        await until(pilot, lambda: train.state == IDLE, "the run to end")
        assert train.last_exit is not None and train.last_exit.code == 0
        done = train._last["done"]
        assert isinstance(done, p.Done) and done.reason == "stopped"
        checkpoint = train._last["checkpoint"]
        assert Path(checkpoint.path).is_file() and checkpoint.step == done.step
        assert "the engine exited cleanly (stopped" in log_text(app)
        assert not train.notes  # nothing malformed came over the socket

    drive(test)


def test_an_invalid_field_shows_its_error_and_blocks_start(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        config = app.query_one(ConfigPane)
        config.set_values(small_run(tmp_path, **{"model.n_embd": "30"}))
        await pilot.press("ctrl+t", "s")
        await pilot.pause()
        train = app.query_one(TrainPane)
        assert train.job is None and train.state == IDLE
        severity, message = app.notes[-1]
        assert severity == "error" and message.startswith("model.n_embd: 30 must be divisible")
        assert "cannot start: model.n_embd" in str(train.query_one("#train-status").content)
        # the form is brought up with the cursor in the field at fault, its error beside it
        row = config.query_one("#field-model-n_embd", FieldRow)
        assert app.query_one(TabbedContent).active == "config" and app.focused is row.editor
        assert "divisible by model.n_head = 4" in row.error
        assert not (tmp_path / "runs").exists()

    drive(test)


def test_an_engine_that_fails_is_reported_with_its_exit_code_and_stderr(tmp_path):
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        missing = tmp_path / "no-such-corpus.txt"
        app.query_one(ConfigPane).set_values(small_run(tmp_path, **{"data.source": str(missing)}))
        await pilot.press("ctrl+t", "s")
        train = app.query_one(TrainPane)
        await until(pilot, lambda: train.last_exit is not None, "the engine to exit")
        assert train.last_exit.code == 2 and train.state == IDLE
        log = log_text(app)
        assert "the engine exited with code 2" in log
        assert f"error: data.source: {missing} does not exist" in log  # its stderr, shown
        severity, message = app.notes[-1]
        assert severity == "error" and message.startswith(f"data.source: {missing} does not")

    drive(test)


def test_an_engine_that_crashes_mid_run_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.query_one(ConfigPane).set_values(small_run(tmp_path))
        train = app.query_one(TrainPane)
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
        app.query_one(ConfigPane).set_values(small_run(tmp_path))
        train = app.query_one(TrainPane)
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step >= 20, "steps after the junk")
        assert len(train.notes) == 4 and train.state == TRAINING
        assert "not JSON" in train.notes[0] and "'launch'" in train.notes[1]
        assert any("byte limit" in note for note in train.notes)
        assert "dropped a message from the engine" in log_text(app)
        await pilot.press("x")
        await until(pilot, lambda: train.state == IDLE, "the stop")
        assert train.last_exit.code == 0

    drive(test)


def test_quitting_asks_and_can_leave_the_run_training_headless(tmp_path, monkeypatch):
    log = tmp_path / "headless.log"
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    procs = []

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.query_one(ConfigPane).set_values(small_run(tmp_path))
        train = app.query_one(TrainPane)
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step > 0, "steps")
        procs.append(train.job.proc)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.press("escape")  # "Don't quit": nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ChoiceDialog), "the dialog to go")
        assert train.state == TRAINING and app.is_running
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.click("#choice-leave")
        await until(pilot, lambda: not app.is_running, "the studio to quit")

    try:
        drive(test)
        proc = procs[0]
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().count("\n") >= 3):
            assert proc.poll() is None, "the engine died with the studio"
            assert time.monotonic() < deadline, "the engine did not carry on headless"
            time.sleep(0.1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_quitting_can_stop_the_run_with_a_checkpoint(tmp_path):
    procs = []

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        app.query_one(ConfigPane).set_values(small_run(tmp_path))
        train = app.query_one(TrainPane)
        fake_engine(train)
        await pilot.press("ctrl+t", "s")
        await until(pilot, lambda: train.step > 0, "steps")
        procs.append(train.job.proc)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), "the question")
        await pilot.press("enter")  # the first choice has the focus: stop it
        await until(pilot, lambda: not app.is_running, "the studio to quit")
        assert train._last["checkpoint"].path.startswith("fake/step_")

    drive(test)
    assert procs[0].wait(timeout=10) == 0


# --- runs on disk -------------------------------------------------------------------------


def test_runs_pane_lists_a_run_shows_its_curves_and_resumes_it(tmp_path):
    from engine.train import train as train_headless

    cfg = tiny_config(tmp_path, train__max_steps=30)
    train_headless(cfg, until=20, quiet=True)  # stopped at 20 of 30, as if by Ctrl-C

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        runs = app.query_one(RunsPane)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: runs.runs, "the run list")
        table = runs.query_one(DataTable)
        row = table.get_row_at(0)
        assert row[0] == "t" and row[2] == "20/30" and row[4] == "stopped"
        assert row[1] == "2L·32d·ctx32 char" and row[3] != "-"

        await pilot.press("enter")
        charts = runs.query_one(RunCharts)
        await until(pilot, lambda: charts.chart("loss").series["val"].xs, "the curves")
        assert charts.chart("loss").series["train"].xs[-1] == 20
        assert "latest sample, step 20" in str(runs.query_one("#runs-sample", Static).content)

        await pilot.press("r")
        train = app.query_one(TrainPane)
        await until(pilot, lambda: train.last_exit is not None, "the resumed run to finish")
        assert train.last_exit.code == 0 and train.step == 30
        assert train._last["start"].resumed_from == 20
        assert app.query_one(ConfigPane).config.name == "t"

    drive(test, config=cfg)  # opened on the run's config, as `gpt-studio --config` would


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
        train = app.query_one(TrainPane)
        assert app.query_one(TabbedContent).active == "train" and train.state == FOLLOWING
        await until(pilot, lambda: train.step == 20, "the complete lines")
        await pilot.pause(0.6)
        assert train.step == 20  # the torn line is held back, not misread
        with open(metrics, "ab") as f:
            f.write(third[20:])
        await until(pilot, lambda: train.step == 30, "the rest of the line")
        assert train.query_one(RunCharts).chart("loss").points == 3
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
        config = app.query_one(ConfigPane)
        config.set_values({"data.cache_dir": str(tmp_path / "cache")})
        data = app.query_one(DatasetPane)
        await pilot.press("ctrl+f")
        await pilot.press("ctrl+u", *str(text), "enter")  # typed into data.source
        await until(pilot, lambda: config.config.data.source == str(text), "the new source")
        await until(pilot, lambda: data.facts and data.facts["source"] == str(text), "a look")
        facts = str(data.query_one("#data-facts", Static).content)
        assert f"bytes       {text.stat().st_size:,}" in facts and "documents   1\n" in facts
        assert "about" in facts and str(data.query_one("#data-preview", Static).content)

        await pilot.press("f3")  # a built-in corpus, then a path that is not there
        assert config.config.data.source == "builtin:code"
        await pilot.press("ctrl+u", *"missing.txt", "enter")
        await until(pilot, lambda: data.inspect_error, "the bad source to be reported")
        assert "missing.txt does not exist" in data.query_one("#data-source", FieldRow).error
        await pilot.press("ctrl+u", *str(text), "enter")
        await until(pilot, lambda: data.facts and not data.inspect_error, "a good source again")

        kind = data.query_one("#data-tokenizer-kind", FieldRow)
        kind.value = "bpe"
        await pilot.pause()
        assert config.config.tokenizer.kind == "bpe"
        vocab = data.query_one("#data-vocab", FieldRow)
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
        await until(pilot, lambda: data.prepared, "the prepare to finish")
        assert bar.percentage == 1.0 and data.progress[0] == data.progress[1] > 0
        assert (tmp_path / "cache").is_dir()
        assert (
            "information",
            "The data is prepared; training will use the cached shards.",
        ) in app.notes

    drive(test)


# --- chat ---------------------------------------------------------------------------------


def test_chat_streams_an_answer_from_a_checkpoint(tmp_path):
    from engine.train import train as train_headless

    cfg = tiny_config(tmp_path, train__max_steps=10)
    train_headless(cfg, quiet=True)

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        await pilot.press("ctrl+r")
        runs = app.query_one(RunsPane)
        await until(pilot, lambda: runs.runs, "the run list")
        await pilot.press("c")  # chat with it: the Chat pane starts engine.generate --serve
        chat = app.query_one(ChatPane)
        assert app.query_one(TabbedContent).active == "chat" and chat.source == str(cfg.run_dir)
        await until(pilot, lambda: chat.ready is not None, "the model to load")
        assert chat.ready.step == 10
        settings = chat.query_one("#chat-max_tokens", FieldRow)
        settings.editor.focus()
        await pilot.press("ctrl+u", *"40")
        chat.query_one("#chat-temperature", FieldRow).editor.focus()
        await pilot.press("ctrl+u", *"9")
        assert "is not a number from 0" in chat.query_one("#chat-temperature", FieldRow).error
        chat.query_one("#chat-prompt").focus()
        await pilot.press(*"the ", "enter")
        assert not chat.history  # refused: the temperature is out of range
        assert app.notes[-1] == (
            "error",
            "temperature: 9.0 is not a number from 0 to 5 (0: greedy)",
        )
        chat.query_one("#chat-temperature", FieldRow).editor.focus()
        await pilot.press("ctrl+u", *"0.8")
        chat.query_one("#chat-prompt").focus()
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
            assert app.query_one(TabbedContent).active == pane
            assert any(a.id == pane for a in app.focused.ancestors_with_self)
        await pilot.press("ctrl+t")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Start", "Quit", "Train pane", "Runs pane"} <= titles
        assert "Pause" not in titles  # nothing to pause yet
        await pilot.press("ctrl+p", *"runs pane")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "runs"

    drive(test)


def test_the_studio_process_never_loads_torch_and_starts_quickly(tmp_path):
    script = tmp_path / "visit.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "t0 = time.perf_counter()\n"
        "from studio.app import StudioApp\n"
        "async def main():\n"
        "    app = StudioApp()\n"
        "    async with app.run_test() as pilot:\n"
        "        await pilot.pause()\n"
        "        print('ready', time.perf_counter() - t0)\n"
        "        for key in ('ctrl+f', 'ctrl+t', 'ctrl+l', 'ctrl+r', 'ctrl+g'):\n"
        "            await pilot.press(key)\n"
        "            await pilot.pause(0.2)\n"
        "asyncio.run(main())\n"
        "heavy = {'torch', 'tokenizers', 'pyarrow', 'tiktoken', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    ready = float(out.stdout.split()[1])
    assert ready < 5.0, f"the studio took {ready:.1f} s to be ready"  # about 1 s unloaded
