"""From a base run to a chat model in the studio: the Runs pane sets up a fine-tune (chat data
checked, the Config pane filled from presets/sft/chat.toml and the run), it trains, and the Chat
pane talks to the live chat-tuned model, and to a chat-tuned checkpoint, through the template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from studio_helpers import RecordingApp, drive, until
from test_train import WORDS, tiny_config
from textual.pilot import Pilot

from engine.contract import events as p
from engine.contract.config import load
from engine.contract.finetune import SFT_PRESET, fine_tune_config
from studio.panes.chat import LIVE
from studio.panes.train import RunState
from studio.widgets.dialogs import PathDialog

pytestmark = [pytest.mark.usefixtures("engine_on_path"), pytest.mark.slow]


def chat_data(path: Path) -> Path:
    """Questions and answers in the words of the base run's corpus (its char vocabulary),
    enough of them for a held-out share."""
    records = [
        {"messages": [{"role": "user", "content": f"the {a} {b}"},
                      {"role": "assistant", "content": f"a {b} sat."}]}
        for a in WORDS for b in WORDS
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


async def answer(pilot: Pilot, dialog_value: str) -> None:
    """Type into the open PathDialog and press its button. After a refusal the studio asks
    again with a new dialog: wait for one that is not the last answered, with its field
    mounted (a dialog just pushed has not composed its children yet)."""

    def ready() -> bool:
        screen = pilot.app.screen
        fresh = isinstance(screen, PathDialog) and screen is not ANSWERED.get("dialog")
        return fresh and bool(screen.query("#path"))

    await until(pilot, ready, "a chat data dialog to answer")
    ANSWERED["dialog"] = pilot.app.screen
    pilot.app.screen.query_one("#path").value = dialog_value
    await pilot.press("enter")


ANSWERED: dict[str, object] = {}  # the dialog `answer` last typed into


def test_a_run_is_fine_tuned_from_the_runs_pane_and_its_live_model_holds_a_conversation(tmp_path):
    from engine.train import train as train_headless

    cfg = tiny_config(tmp_path, train__max_steps=10)
    train_headless(cfg, quiet=True)
    data = chat_data(tmp_path / "qa.jsonl")

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        runs = app.runs_pane
        await pilot.press("ctrl+r")
        await until(pilot, lambda: runs.runs, "the run list")
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, PathDialog), "the chat data dialog")
        assert app.screen.query_one("#path").value == "builtin:chat"  # the preset's data
        await answer(pilot, str(tmp_path / "corpus.txt"))  # plain text: refused, asked again
        await until(pilot, lambda: app.notes and app.notes[-1][0] == "error", "the refusal")
        assert app.notes[-1][1] == (
            f"{tmp_path / 'corpus.txt'} holds plain text, not conversations; give builtin:chat, "
            'or a .jsonl or parquet file (or a glob or folder of them) of {"messages": [...]} '
            'or {"prompt", "completion"} records'
        )
        await answer(pilot, str(tmp_path / "nowhere.jsonl"))
        await until(pilot, lambda: "does not exist" in app.notes[-1][1], "the second refusal")
        assert "\n" not in app.notes[-1][1]
        await answer(pilot, str(data))

        config = app.config_pane
        await until(pilot, lambda: app.tabs.active == "config", "the Config pane")
        tuned, preset = config.config, load(SFT_PRESET)
        assert tuned.train.init_from == str(cfg.run_dir) and tuned.name == "t-chat"
        assert tuned.data.source == str(data) and tuned.out_dir == cfg.out_dir
        assert tuned.model == cfg.model and tuned.tokenizer == cfg.tokenizer  # the run's shape
        assert (tuned.train.lr, tuned.train.max_steps) == (preset.train.lr, preset.train.max_steps)
        assert config.source == f"presets/sft/chat.toml on {cfg.name}" and config.is_valid
        # a run long enough to talk to, and small enough to step fast
        config.set_values({"train.max_steps": "100000", "train.batch_size": "4",
                           "train.sample_prompts": '["the cat"]', "train.sample_tokens": "8",
                           "train.device": "cpu"})  # fmt: skip

        await pilot.press("ctrl+t", "s")
        train = app.train_pane
        await until(pilot, lambda: train.state is RunState.TRAINING, "the fine-tune to start")
        start = train.view.last(p.Start)
        assert start.chat_tuned and start.config["train"]["init_from"] == str(cfg.run_dir)
        await until(pilot, lambda: app.live_chat, "the studio to know the run is chat-tuned")

        asked: list[p.SampleRequest] = []
        ask = train.ask_sample
        train.ask_sample = lambda request: asked.append(request) or ask(request)
        chat = app.chat_pane
        await pilot.press("ctrl+l")
        chat.use(LIVE)
        assert chat.query_one("#chat-template-box").display and chat.setting("remember").value
        chat.setting("system").value = "a dog sat"
        chat.setting("max_tokens").value = "8"
        await pilot.pause()
        for prompt in ("the cat", "the dog"):
            assert chat.send(prompt)
            await until(pilot, lambda: chat.history[-1].done, f"the answer to {prompt!r}")
        first, second = chat.history
        assert first.note.startswith("live weights at step") and second.templated
        assert asked[0].system == asked[1].system == "a dog sat" and asked[0].turns == []
        assert asked[1].turns == [{"role": "user", "content": "the cat"},
                                  {"role": "assistant", "content": first.answer}]  # fmt: skip
        assert f"{first.model} › {first.answer}" in first.shown  # the answer alone, no echo
        assert chat.send("the ¤")  # a character the model never saw: answered with why
        await until(pilot, lambda: chat.history[-1].done, "the refusal of the live model")
        assert chat.history[-1].note.startswith("error: character '¤' is not in the char")
        assert len(chat.turns) == 4  # the refused question did not join the conversation

        await pilot.press("ctrl+t", "x")
        await until(pilot, lambda: train.state is RunState.IDLE, "the fine-tune to stop")
        assert train.last_exit is not None and train.last_exit.code == 0

    drive(test, config=cfg)


def test_the_chat_pane_talks_to_a_chat_tuned_checkpoint_through_the_template(tmp_path):
    from engine.train import train as train_headless

    base = tiny_config(tmp_path, train__max_steps=5)
    train_headless(base, quiet=True)
    tuned = fine_tune_config(base.run_dir, str(chat_data(tmp_path / "qa.jsonl")))
    tuned.train.max_steps, tuned.train.warmup_steps, tuned.train.device = 5, 1, "cpu"
    tuned.train.sample_prompts = ["the cat"]  # the preset's are not in this char vocabulary
    train_headless(tuned, quiet=True)

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        chat = app.chat_pane
        await pilot.press("ctrl+l")
        sent: list[p.ChatRequest] = []
        assert not chat.query_one("#chat-template-box").display  # no chat model (yet)
        chat.use(str(tuned.run_dir))
        await until(pilot, lambda: chat.ready is not None, "the model to load")
        assert chat.ready.chat_tuned and chat.templated
        assert chat.query_one("#chat-template-box").display and chat.setting("remember").value
        assert "chat-tuned" in str(chat.model_info.content)
        ask = chat.server.ask
        chat.server.ask = lambda request: sent.append(request) or ask(request)
        chat.setting("system").value = "a dog sat"
        chat.setting("max_tokens").value = "8"
        await pilot.pause()
        for prompt in ("the cat", "the dog"):
            assert chat.send(prompt)
            await until(pilot, lambda: chat.history[-1].done, f"the answer to {prompt!r}")
        assert all("tokens at" in e.note for e in chat.history)
        # the first request starts the conversation with the system prompt, the second goes on
        assert (sent[0].system, sent[0].reset, sent[0].chat) == ("a dog sat", True, True)
        assert (sent[1].system, sent[1].reset, sent[1].chat) == (None, False, True)
        chat.setting("system").value = "a cat sat"  # a new system prompt: a new conversation
        await pilot.pause()
        assert chat.send("the cat")
        await until(pilot, lambda: chat.history[-1].done, "the answer after the new system")
        assert (sent[2].system, sent[2].reset) == ("a cat sat", True)

    drive(test)
