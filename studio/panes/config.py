"""The Config pane: pick a preset, edit every field, see faults and costs as you type, save.

Every change rebuilds a candidate Config from the whole form, so what the pane reports valid is
exactly what engine.contract.config would load. Typing rules come from it (apply_overrides and
check), never from a second parser here, so the form and the command line cannot disagree.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import tomli_w
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select, Static, Switch

from engine.contract.config import (
    CHOICES,
    SECTIONS,
    Config,
    ConfigError,
    apply_overrides,
    check,
    help_for,
    load,
    load_preset,
    preset_description,
    presets,
    save,
)
from studio.command import headless_command
from studio.messages import ConfigChanged, ConfigState
from studio.widgets.dialogs import CommandDialog, ConfirmDialog, PathDialog
from studio.widgets.form import FieldRow
from studio.widgets.summary import ConfigSummary

PRESET_KEYS = {"tiny": "f2", "mini": "f3", "medium": "f4", "large": "f5"}
PLACEHOLDERS = {
    "int": "a whole number",
    "float": "a number, e.g. 3e-4",
    "list[str]": 'a list, e.g. ["Once upon a time", "The "]',
    "str": "(empty)",
}


def form_fields() -> dict[str, str]:
    """Every field of a Config, dotted key to type name, in the order a TOML file lists them."""
    out = {f.name: _type_name(f.type) for f in fields(Config) if f.name not in SECTIONS}
    for section, cls in SECTIONS.items():
        out.update({f"{section}.{f.name}": _type_name(f.type) for f in fields(cls)})
    return out


def _type_name(t: Any) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _owner(cfg: Config, key: str) -> tuple[Any, str]:
    """The object holding a dotted key and the attribute name: (cfg.model, "n_embd")."""
    section, _, name = key.rpartition(".")
    return (getattr(cfg, section) if section else cfg), name


def get_value(cfg: Config, key: str) -> Any:
    return getattr(*_owner(cfg, key))


def to_editor(value: Any, kind: str) -> bool | str:
    """The form's text for a value; `from_editor` reads it back to an equal value."""
    if kind == "list[str]":
        return "[" + ", ".join(tomli_w.dumps({"v": v})[4:-1] for v in value) + "]"
    if kind == "float":
        return repr(value)  # the shortest text that reads back to the same float
    return value if kind == "bool" else str(value)


def from_editor(cfg: Config, key: str, kind: str, raw: bool | str) -> None:
    """Set `key` on `cfg` from an editor's raw value; ConfigError says why it does not fit."""
    if kind in ("bool", "str"):  # switches, selects and free text are already the right type
        setattr(*_owner(cfg, key), raw)
        return
    assert isinstance(raw, str)
    apply_overrides(cfg, [f"--{key}={raw}"])
    if kind == "list[str]" and raw.lstrip().startswith("[") and get_value(cfg, key) == [raw]:
        # not TOML, so the override took it as one bare prompt; brackets say a list was meant
        raise ConfigError.field(
            "form", key, raw, 'must be a list of quoted strings, e.g. ["The ", "A "]'
        )


def find_field(keys: list[str], typed: str) -> str | None:
    """The field a person means by `typed`: the key itself, else the one whose own name is it
    (`lr` is train.lr, not train.min_lr), else the first whose own name begins with it, else
    the first that contains it anywhere."""
    typed = typed.strip().lower()
    if not typed:
        return None
    for match in (
        lambda k: k == typed,
        lambda k: k.rpartition(".")[2] == typed,
        lambda k: k.rpartition(".")[2].startswith(typed),
        lambda k: typed in k,
    ):
        found = next((k for k in keys if match(k.lower())), None)
        if found is not None:
            return found
    return None


def _reason(err: ConfigError) -> str:
    """What to show beside the field at fault: its value and what the field accepts."""
    return f"{err.value!r} {err.allowed}" if err.allowed else str(err)


def _row_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


class ConfigPane(Vertical):
    """Edits one run config; `config` is the last valid one and `ConfigChanged` says when it moves."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save_as", "Save as", tooltip="Write this config to a TOML file"),
        Binding("ctrl+o", "open", "Open", tooltip="Replace the form with a TOML config file"),
        Binding("f8", "next_problem", "Next problem", tooltip="Jump to the next field at fault"),
        Binding("f6", "show_command", "Show command", tooltip="The headless command for this"),
        Binding("f7", "find_field", "Find field", tooltip="Jump to a field by part of its name"),
        *[
            Binding(
                key,
                f"preset('{name}')",
                f"Load the {name} preset",
                tooltip=f"Replace the form with presets/{name}.toml",
                group=Binding.Group("Presets"),
            )
            for name, key in PRESET_KEYS.items()
        ],
    ]

    def __init__(
        self, config: Config | None = None, source: str = "", *, id: str | None = None
    ) -> None:
        """Start from `config` (read from `source`), else the smallest preset."""
        super().__init__(id=id)
        self._presets = {name: preset_description(path) for name, path in presets().items()}
        if config is None and self._presets:
            name = next(iter(self._presets))
            config, source = load_preset(name), f"preset:{name}"
        self._config = config or Config()
        self._loaded = copy.deepcopy(self._config)
        self._source = source
        self._kinds = form_fields()
        self._rows: dict[str, FieldRow] = {}
        self._errors: dict[str, str] = {}
        self._posted: tuple[Config, dict[str, str], str] | None = None

    # -- data out --------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The last valid config (a copy: edit the form, not this)."""
        return copy.deepcopy(self._config)

    @property
    def is_valid(self) -> bool:
        return not self._errors

    @property
    def errors(self) -> dict[str, str]:
        """What is wrong, by dotted key, in form order; empty when valid."""
        return dict(self._errors)

    @property
    def source(self) -> str:
        """Where the form was last filled from: `preset:NAME`, a file path, or empty."""
        return self._source

    # -- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="presets"):
            yield Label("Preset", id="presets-label")
            for name, description in self._presets.items():
                yield Button(name.title(), id=f"preset-{name}", compact=True, tooltip=description)
            yield Static(id="source", markup=False)
        with Horizontal(id="config-body"):
            with VerticalScroll(id="form"):
                section = None
                for key, kind in self._kinds.items():
                    head = key.rpartition(".")[0] or "run"
                    if head != section:
                        section = head
                        yield Label(f"[{head}]", classes="section", markup=False)
                    row = FieldRow(
                        key,
                        to_editor(get_value(self._config, key), kind),
                        choices=CHOICES.get(key),
                        placeholder=PLACEHOLDERS.get(kind, ""),
                        help=help_for(key),
                        id=_row_id(key),
                    )
                    self._rows[key] = row
                    yield row
            yield ConfigSummary(id="summary")

    def on_mount(self) -> None:
        self._rebuild()

    # -- data in ---------------------------------------------------------------------------

    def show_config(self, config: Config, source: str = "") -> None:
        """Fill the form from `config`; what was typed before is replaced."""
        self._config = copy.deepcopy(config)
        self._loaded = copy.deepcopy(config)
        self._source = source
        with self.prevent(Input.Changed, Select.Changed, Switch.Changed):  # one rebuild, not 60
            for key, row in self._rows.items():
                row.value = to_editor(get_value(config, key), self._kinds[key])
        self._rebuild()

    def set_values(self, values: dict[str, bool | str]) -> None:
        """Type into some fields at once, as a person would (other panes choose data here)."""
        with self.prevent(Input.Changed, Select.Changed, Switch.Changed):
            for key, value in values.items():
                self._rows[key].value = value
        self._rebuild()

    def focus_field(self, key: str) -> None:
        """Put the cursor in a field, e.g. the one that blocked a start."""
        if key in self._rows:
            self._rows[key].editor.focus()

    def know_vocab(self, config: Config, vocab_size: int) -> None:
        """Data for `config` is prepared with `vocab_size` token ids: the figures use it (for
        as long as the form names the same data and tokenizer) instead of a guess."""
        self.query_one(ConfigSummary).know_vocab(config, vocab_size)

    def on_field_row_changed(self, event: FieldRow.Changed) -> None:
        event.stop()
        self._rebuild()

    def _rebuild(self) -> None:
        """Read the whole form into a candidate Config; keep it if nothing is at fault."""
        candidate = copy.deepcopy(self._config)  # a field that does not parse keeps its value
        wrong: dict[str, str] = {}
        for key, row in self._rows.items():
            try:
                from_editor(candidate, key, self._kinds[key], row.value)
            except ConfigError as err:
                wrong[key] = _reason(err)
        faults = check(candidate)
        self._errors = {
            k: wrong.get(k) or faults[k] for k in self._rows if k in wrong or k in faults
        }
        for key, row in self._rows.items():
            row.error = self._errors.get(key, "")
        if not self._errors:
            self._config = candidate
        self._show_state()

    def _show_state(self) -> None:
        summary = self.query_one(ConfigSummary)
        summary.config = copy.deepcopy(self._config)
        summary.problems = dict(self._errors)
        edited = " · edited" if self._errors or self._config != self._loaded else ""
        source = self._describe_source() + edited
        label = self.query_one("#source", Static)
        if str(label.content) != source:  # a relayout per keystroke makes typing lag
            label.update(source)
        for name in self._presets:
            active = self._source == f"preset:{name}"
            self.query_one(f"#preset-{name}", Button).set_class(active, "-active")
        state = (self.config, self.errors, self._source)
        if state == self._posted:
            return
        if self._posted is None or bool(self._posted[1]) != bool(self._errors):
            self.refresh_bindings()  # "Next problem" is offered only while there is one
        self._posted = state
        self.post_message(ConfigChanged(ConfigState(self.config, self.errors, self._source)))

    def _describe_source(self) -> str:
        kind, _, name = self._source.partition(":")
        if kind == "preset" and name in self._presets:
            return self._presets[name]
        return f"from {self._source}" if self._source else "new config"

    # -- actions ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "preset":
            return parameters[0] in self._presets
        if action == "next_problem":
            return bool(self._errors)
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        button_id = event.button.id or ""
        if button_id.startswith("preset-"):
            event.stop()
            self.action_preset(button_id.removeprefix("preset-"))

    def action_preset(self, name: str) -> None:
        """Replace the form with a shipped preset."""
        try:
            config = load_preset(name)
        except (ConfigError, OSError) as err:
            self.notify(str(err), title="Preset not loaded", severity="error", markup=False)
            return
        self.show_config(config, f"preset:{name}")

    def action_next_problem(self) -> None:
        """Focus the first field at fault after the focused one, wrapping round."""
        keys = list(self._errors)
        if not keys:
            return
        focused = self.screen.focused
        current = next((k for k in keys if self._rows[k].editor is focused), None)
        after = keys[(keys.index(current) + 1) % len(keys)] if current else keys[0]
        self._rows[after].editor.focus()

    @work(exclusive=True, group="config-find")
    async def action_find_field(self) -> None:
        """Ask for part of a field's name and put the cursor in the field it names."""
        keys = list(self._rows)
        answer = await self.app.push_screen_wait(
            PathDialog(
                "Go to the field named (part of it is enough, e.g. max_steps or lr):",
                action="Go",
                placeholder="part of a field name",
                suggester=SuggestFromList(keys, case_sensitive=False),
            )
        )
        if not answer:
            return
        key = find_field(keys, answer)
        if key is None:
            self.notify(f"no field is named like {answer!r}", severity="warning", markup=False)
            return
        self.focus_field(key)

    def action_show_command(self) -> None:
        """The `python -m engine.train ...` line that trains what the form holds, on a server."""
        if self._refuse_invalid("show the command"):
            return
        self.app.push_screen(
            CommandDialog(
                "Train this config headless (from this folder, or a clone on a server):",
                headless_command(self._config, self._source),
            )
        )

    @work(exclusive=True, group="config-file")
    async def action_save_as(self) -> None:
        """Ask for a path and write the config there, never over a file without asking."""
        if self._refuse_invalid("save"):
            return
        opened = self._source if not self._source.startswith("preset:") else ""
        answer = await self.app.push_screen_wait(  # a preset is never offered as the target
            PathDialog("Save config as", opened or f"{self._config.name}.toml", action="Save")
        )
        if not answer:
            return
        path = Path(answer).expanduser()
        replace = path.is_file()
        if path.exists() and not replace:
            self.notify(f"{path} is not a file", title="Not saved", severity="error", markup=False)
            return
        if replace and not await self.app.push_screen_wait(
            ConfirmDialog(f"{path} already exists. Replace it?", yes="Replace")
        ):
            self.notify(f"{path} left as it was", title="Not saved", markup=False)
            return
        try:
            save(self._config, path, overwrite=replace)
        except (ConfigError, OSError) as err:
            self.notify(str(err), title="Not saved", severity="error", markup=False)
            return
        self._loaded, self._source = copy.deepcopy(self._config), str(path)
        self._show_state()
        self.notify(f"Saved {path}", markup=False)

    @work(exclusive=True, group="config-file")
    async def action_open(self) -> None:
        """Ask for a TOML path and load it; a file that does not load leaves the form as it was."""
        answer = await self.app.push_screen_wait(PathDialog("Open config", action="Open"))
        if not answer:
            return
        path = Path(answer).expanduser()
        try:
            config = load(path)
        except (ConfigError, OSError) as err:
            self.notify(str(err), title="Not opened", severity="error", markup=False)
            return
        self.show_config(config, str(path))
        self.notify(f"Opened {path}", markup=False)

    def _refuse_invalid(self, what: str) -> bool:
        if not self._errors:
            return False
        key, reason = next(iter(self._errors.items()))
        more = f" (and {len(self._errors) - 1} more)" if len(self._errors) > 1 else ""
        self.notify(
            f"{key}: {reason}{more}",
            title=f"Cannot {what}: fix this first",
            severity="error",
            markup=False,
        )
        self._rows[key].editor.focus()
        return True
