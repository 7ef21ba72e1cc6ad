"""The Config pane, driven through the real app with key presses and clicks.

pytest-asyncio is not a dependency, so each test is a plain function running one coroutine.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from studio_helpers import until
from textual.command import CommandList
from textual.pilot import Pilot
from textual.widgets import Input, Static

from engine.contract.config import Config, help_for, load, load_preset, presets
from engine.contract.render import human
from engine.contract.sizing import summary
from studio.app import StudioApp, main
from studio.messages import ConfigChanged
from studio.panes.config import PRESET_KEYS, ConfigPane, from_editor, get_value, to_editor
from studio.widgets.dialogs import ConfirmDialog, PathDialog
from studio.widgets.form import FieldRow
from studio.widgets.summary import ConfigSummary

SIZE = (100, 30)


class RecordingApp(StudioApp):
    """The studio, noting what it tells the user and what the pane reports upward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []
        self.changes: list[ConfigChanged] = []

    def notify(self, message: str, *, severity: str = "information", **kwargs) -> None:
        self.notes.append((severity, message))
        super().notify(message, severity=severity, **kwargs)

    def on_config_changed(self, message: ConfigChanged) -> None:
        self.changes.append(message)
        super().on_config_changed(message)


def drive(test: Callable[[RecordingApp, Pilot, ConfigPane], Awaitable[None]], **app_kw) -> None:
    async def run() -> None:
        app = RecordingApp(**app_kw)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await test(app, pilot, app.query_one(ConfigPane))

    asyncio.run(run())


def row(pane: ConfigPane, key: str) -> FieldRow:
    return pane.query_one(f"#field-{key.replace('.', '-')}", FieldRow)


async def retype(pilot: Pilot, pane: ConfigPane, key: str, text: str) -> None:
    """Focus a field's input, clear it and type `text` key by key, as a person would."""
    editor = row(pane, key).editor
    editor.focus()
    await pilot.press("end", "ctrl+u", *text)
    await pilot.pause()


async def answer_path(app: RecordingApp, pilot: Pilot, path: Path) -> None:
    await pilot.pause()
    assert isinstance(app.screen, PathDialog)
    app.screen.query_one(Input).value = str(path)
    await pilot.press("enter")
    await pilot.pause()


def form_values(pane: ConfigPane) -> dict[str, object]:
    return {r.key: r.value for r in pane.query(FieldRow)}


def test_picking_each_preset_shows_its_parameter_count():
    async def test(app, pilot, pane):
        figures = pane.query_one("#summary-figures", Static)
        for name in presets():
            expected = summary(load_preset(name))["params"]
            await pilot.click(f"#preset-{name}")
            await pilot.pause()
            assert pane.source == f"preset:{name}"
            assert pane.config == load_preset(name)
            assert pane.query_one(ConfigSummary).figures["params"] == expected
            assert f"parameters            {human(expected)}" in str(figures.content)
        last = list(presets())[-1]
        assert app.changes[-1].state.config == load_preset(last) and app.changes[-1].state.valid
        await pilot.press(PRESET_KEYS["mini"])  # the footer keys do the same
        assert pane.config == load_preset("mini") and pane.source == "preset:mini"

    drive(test)


def test_n_embd_not_divisible_by_n_head_is_shown_at_the_field_and_blocks_saving():
    async def test(app, pilot, pane):
        n_embd = row(pane, "model.n_embd")
        await retype(pilot, pane, "model.n_embd", "130")
        assert not pane.is_valid
        assert "divisible by model.n_head = 4" in n_embd.error
        assert n_embd.has_class("-error")
        assert "divisible" in str(n_embd.query_one(".field-error", Static).content)
        assert pane.config.model.n_embd == 128  # the last valid config stays available
        assert (
            app.changes[-1].state.valid is False and "model.n_embd" in app.changes[-1].state.errors
        )
        assert not row(pane, "model.n_head").error  # only the field at fault is marked

        row(pane, "train.seed").editor.focus()
        await pilot.press("ctrl+s")  # refused, naming the field, which gets the focus
        assert not isinstance(app.screen, PathDialog)
        severity, message = app.notes[-1]
        assert severity == "error" and message.startswith("model.n_embd: 130 must be divisible")
        assert app.focused is n_embd.editor

        await retype(pilot, pane, "model.n_embd", "136")
        assert pane.is_valid and not n_embd.error and not n_embd.has_class("-error")
        assert pane.config.model.n_embd == 136
        assert app.changes[-1].state.valid and app.changes[-1].state.config.model.n_embd == 136
        params = summary(pane.config)["params"]
        assert pane.query_one(ConfigSummary).figures["params"] == params

    drive(test)


def test_letters_in_an_integer_field_are_an_error_not_a_crash():
    async def test(app, pilot, pane):
        await retype(pilot, pane, "model.n_layer", "abc")
        assert row(pane, "model.n_layer").error == "'abc' must be a whole number"
        assert not pane.is_valid and pane.config.model.n_layer == 4
        await retype(pilot, pane, "train.lr", "x")
        assert row(pane, "train.lr").error == "'x' must be a number"
        assert list(pane.errors) == ["model.n_layer", "train.lr"]  # form order
        await pilot.press("f8")  # "Next problem" wraps round to the first fault
        assert app.focused is row(pane, "model.n_layer").editor

    drive(test)


def test_switches_and_selects_edit_the_config():
    async def test(app, pilot, pane):
        row(pane, "model.bias").editor.focus()
        await pilot.press("space")
        await pilot.pause()
        assert pane.config.model.bias is True
        row(pane, "model.mlp").value = "swiglu"
        await pilot.pause()
        assert pane.config.model.mlp == "swiglu" and pane.is_valid

    drive(test)


def test_the_recipe_switches_are_in_the_form_and_edit_the_config():
    async def test(app, pilot, pane):
        for key in ("model.qk_norm", "model.norm_affine", "model.zero_init"):
            before = get_value(pane.config, key)
            row(pane, key).editor.focus()
            await pilot.press("space")
            await pilot.pause()
            assert get_value(pane.config, key) is not before
        row(pane, "model.mlp").value = "relu2"
        row(pane, "train.optimizer").value = "muon"
        await pilot.pause()
        await retype(pilot, pane, "model.logit_softcap", "15")
        await retype(pilot, pane, "train.matrix_lr", "0.03")
        config = pane.config
        assert (config.model.mlp, config.train.optimizer) == ("relu2", "muon")
        assert (config.model.logit_softcap, config.train.matrix_lr) == (15.0, 0.03)
        assert pane.is_valid

    drive(test)


def test_save_as_writes_a_toml_that_loads_back_equal(tmp_path):
    target = tmp_path / "sub" / "mine.toml"

    async def test(app, pilot, pane):
        await retype(pilot, pane, "train.lr", "3e-4")
        assert pane.is_valid, pane.errors
        await pilot.press("ctrl+s")
        await answer_path(app, pilot, target)
        assert app.notes[-1] == ("information", f"Saved {target}"), app.notes
        assert load(target) == pane.config and load(target).train.lr == 3e-4
        assert pane.config.train.sample_prompts == ["The ", "Python "]  # a list field too
        assert pane.source == str(target)

    drive(test)


def test_save_as_never_replaces_a_file_without_confirmation(tmp_path):
    target = tmp_path / "keep.toml"
    target.write_bytes(b"# mine, not yours\n")

    async def test(app, pilot, pane):
        await pilot.press("ctrl+s")
        await answer_path(app, pilot, target)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("enter")  # Cancel has the focus: Enter does not replace
        await pilot.pause()
        assert target.read_bytes() == b"# mine, not yours\n"

        await pilot.press("ctrl+s")
        await answer_path(app, pilot, target)
        await pilot.press("escape")
        await pilot.pause()
        assert target.read_bytes() == b"# mine, not yours\n"

        await pilot.press("ctrl+s")
        await answer_path(app, pilot, target)
        await pilot.click("#yes")
        await pilot.pause()
        assert load(target) == pane.config

    drive(test)


def test_open_loads_a_good_file_and_a_bad_one_leaves_the_form_alone(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_layer = \n", encoding="utf-8")
    good = tmp_path / "good.toml"
    good.write_text('name = "mine"\n[model]\nn_layer = 3\n', encoding="utf-8")

    async def test(app, pilot, pane):
        await retype(pilot, pane, "name", "x")
        before, config = form_values(pane), pane.config
        for path in (bad, tmp_path / "missing.toml"):
            await pilot.press("ctrl+o")
            await answer_path(app, pilot, path)
            severity, message = app.notes[-1]
            assert severity == "error" and str(path) in message and "\n" not in message
            assert form_values(pane) == before and pane.config == config

        await pilot.press("ctrl+o")
        await answer_path(app, pilot, good)
        assert pane.config == load(good)
        assert row(pane, "model.n_layer").value == "3" and pane.source == str(good)

    drive(test)


def test_command_palette_offers_the_pane_actions():
    async def test(app, pilot, pane):
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Save as", "Open", "Load the mini preset"} <= titles
        assert "Next problem" not in titles  # only offered while there is one

        await pilot.press("ctrl+p")
        await pilot.press(*"save as")
        matches = app.screen.query_one(CommandList)
        await until(pilot, lambda: matches.option_count, "the palette's matches")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PathDialog), "the save dialog")

    drive(test)


def test_app_opens_the_config_given_on_the_command_line(tmp_path):
    path = tmp_path / "start.toml"
    path.write_text('name = "start"\n[model]\nn_head = 2\n', encoding="utf-8")

    async def test(app, pilot, pane):
        assert pane.config == load(path) and pane.source == str(path)
        assert pane.is_valid and app.title == "gpt-studio"

    drive(test, config=load(path), source=str(path))


def test_bad_config_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n", encoding="utf-8")
    for path in (tmp_path / "missing.toml", bad):
        assert main(["--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and err.count("\n") == 1


def test_importing_the_studio_never_imports_torch():
    code = (
        "import studio.app, sys; "
        "heavy = {'torch', 'tokenizers', 'pyarrow', 'tiktoken'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@given(st.lists(st.text()))
def test_list_fields_round_trip_through_their_text(prompts):
    cfg = Config()
    from_editor(cfg, "train.sample_prompts", "list[str]", to_editor(prompts, "list[str]"))
    assert cfg.train.sample_prompts == prompts


@given(st.floats(min_value=0, max_value=1e30, allow_nan=False))
def test_float_fields_round_trip_through_their_text(value):
    cfg = Config()
    from_editor(cfg, "train.lr", "float", to_editor(value, "float"))
    assert cfg.train.lr == value


def test_the_focused_field_shows_its_help_line_and_the_others_hide_theirs():
    async def test(app: RecordingApp, pilot: Pilot, pane: ConfigPane) -> None:
        def shown_help(key: str) -> str | None:
            labels = row(pane, key).query(".field-help")
            visible = [label for label in labels if label.display and label.region.height]
            return str(visible[0].content) if visible else None

        row(pane, "train.max_steps").editor.focus()
        await pilot.pause()
        assert shown_help("train.max_steps") == help_for("train.max_steps")
        assert shown_help("train.lr") is None
        await pilot.press("tab")  # the next field: its help opens, the last one's closes
        await pilot.pause()
        nxt = next(k for k, r in ((r.key, r) for r in pane.query(FieldRow)) if r.has_focus_within)
        assert nxt != "train.max_steps" and shown_help(nxt) == help_for(nxt)
        assert shown_help("train.max_steps") is None

    drive(test)


def test_a_short_run_is_not_refused_and_the_summary_shows_what_it_will_do():
    async def test(app: RecordingApp, pilot: Pilot, pane: ConfigPane) -> None:
        await retype(pilot, pane, "train.max_steps", "300")
        await retype(pilot, pane, "train.warmup_steps", "700")
        assert pane.is_valid and pane.config.train.warmup_steps == 700  # kept as written
        text = " ".join(str(pane.query_one("#summary-figures", Static).content).split())
        assert "samples every 60 steps" in text and "checkpoints every 60 steps" in text
        assert "warmup 30 steps (cut*)" in text
        assert "* train.warmup_steps = 700 is longer than the run" in text

    drive(test)
