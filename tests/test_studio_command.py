"""Show command: the headless line that trains what the studio's form holds."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from studio_helpers import RecordingApp, drive, until
from textual.pilot import Pilot

from engine.contract.config import apply_overrides, load, load_preset
from studio.command import headless_command
from studio.widgets.dialogs import CommandDialog


def reload(command: str):
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "engine.train"]
    return load(args[3], args[4:])


def test_the_command_names_the_preset_and_only_the_fields_that_differ(monkeypatch, tmp_path):
    config = load_preset("tiny")
    assert headless_command(config, "preset:tiny") == "python -m engine.train tiny"
    apply_overrides(config, ["--train.lr=0.002", "--name=my run", '--train.sample_prompts=["A "]'])
    command = headless_command(config, "preset:tiny")
    assert "--train.lr=0.002" in command and "'--name=my run'" in command
    assert command.count("--") == 3
    assert reload(command) == config


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12))
def test_any_string_value_reads_back_through_the_shell_and_the_override_parser(text):
    config = load_preset("tiny")
    config.tokenizer.name = text
    assert reload(headless_command(config, "preset:tiny")).tokenizer.name == text


def test_f6_in_the_config_pane_shows_the_command_to_copy():
    async def test(app: RecordingApp, pilot: Pilot) -> None:
        await pilot.press("f3")  # the Mini preset
        app.config_pane.set_values({"train.max_steps": "1234"})
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, CommandDialog), "the dialog")
        command = app.screen.command
        assert command == "python -m engine.train mini --train.max_steps=1234"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CommandDialog), "it to close")

    drive(test)


pytestmark = pytest.mark.usefixtures("engine_on_path")


def test_a_preset_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no presets/ folder here: they ship inside the package
    assert load("tiny") == load_preset("tiny")
    config = load_preset("mini")
    assert reload(headless_command(config, "preset:mini")) == config
