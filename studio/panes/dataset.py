"""The Dataset pane: choose what to train on and how to cut it into tokens; look; prepare.

Nothing here is a second config: every choice goes up to the app as `ValuesChosen` (dotted keys and
the text a person would type) and lands in the Config pane's form, which validates it; the app
hands the resulting config back down through its `config` reactive, which this pane watches. So the Dataset pane, the Config pane
and the run that starts can never disagree about the data.

Looking inside a corpus (`python -m engine.data inspect SOURCE --json`) and preparing it
(`python -m engine.data prepare CONFIG --events`) run as subprocesses in workers.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DirectoryTree, Input, Label, ProgressBar, Select, Static

from engine.contract import events as p
from engine.contract import framing
from engine.contract.config import Config, save
from engine.contract.render import event_line, human, progress_line, shown_path
from engine.contract.sizing import TIKTOKEN_VOCAB
from studio.jobs import first_error, run_engine
from studio.link import private_dir
from studio.messages import ConfigState, ValuesChosen, VocabKnown
from studio.widgets.form import FieldRow

BUILTINS = {"prose": "f2", "code": "f3"}
TOKENIZERS = {
    "char": "char: one token per character (Tiny; small vocabulary)",
    "bpe": "bpe: train a byte-level BPE on this corpus (vocab size below)",
    "tiktoken:cl100k_base": "cl100k_base: GPT-4's tokenizer (100K vocabulary, bundled)",
}
SOURCE_HINT = "builtin:prose, builtin:code, a file, a folder, or a parquet glob like data/*.parquet"


def tokenizer_choice(config: Config) -> str:
    """The Select value for a config's tokenizer."""
    tok = config.tokenizer
    return f"tiktoken:{tok.name}" if tok.kind == "tiktoken" else tok.kind


class DataTree(DirectoryTree):
    """The working directory's files: Enter on a file takes it; `u` takes the folder."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "use_folder", "Use folder", tooltip="Train on every matching file in it"),
    ]

    class FolderChosen(Message):
        def __init__(self, path: Path) -> None:
            super().__init__()
            self.path = path

    def action_use_folder(self) -> None:
        node = self.cursor_node
        if node is None or node.data is None:
            return
        path = node.data.path
        self.post_message(self.FolderChosen(path if path.is_dir() else path.parent))


class DatasetPane(Vertical):
    """Corpus, a look inside it, tokenizer, and preparing it with a progress bar."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *[
            Binding(
                key,
                f"builtin('{name}')",
                f"builtin:{name}",
                tooltip=f"Train on the built-in {name} corpus",
                group=Binding.Group("Built-in corpora"),
            )
            for name, key in BUILTINS.items()
        ],
        # F-keys rather than ctrl+letters: the text fields here own most of those, and tmux
        # takes ctrl+b
        Binding("f4", "inspect", "Look again", tooltip="Count and preview the corpus anew"),
        Binding("f5", "prepare", "Prepare", tooltip="Tokenize the corpus into cached shards"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.config: Config | None = None
        self.errors: dict[str, str] = {}
        self.facts: dict | None = None  # the last `inspect --json` answer shown
        self.inspect_error = ""
        self.prepared: str = ""  # where the last prepare put its shards, as a line
        self.ready: p.DataReady | None = None  # what the last prepare produced
        self.progress: tuple[float, float | None] = (0.0, None)
        self._inspected = ""  # the source (and options) the facts are about

    def compose(self) -> ComposeResult:
        with Horizontal(id="data-builtins"):
            yield Label("Corpus", classes="data-label")
            for name in BUILTINS:
                yield Button(f"builtin:{name}", id=f"builtin-{name}", compact=True)
            yield Static(SOURCE_HINT, id="data-hint", markup=False)
        yield FieldRow(
            "data.source", "", placeholder=SOURCE_HINT, title="data.source", id="data-source"
        )
        with Horizontal(id="data-body"):
            yield DataTree(Path("."), id="data-tree")  # the working directory, as typed paths are
            with VerticalScroll(id="data-look"):
                yield Static("", id="data-facts", markup=False)
                yield Static("", id="data-preview", markup=False)
        with Horizontal(id="data-tokenizer"):
            yield FieldRow(
                "tokenizer.kind",
                "char",
                choices=list(TOKENIZERS),
                labels=TOKENIZERS,
                title="tokenizer",
                id="data-tokenizer-kind",
            )
            yield FieldRow("tokenizer.vocab_size", "8192", title="vocab size", id="data-vocab")
        with Horizontal(id="data-prepare"):
            yield Button("Prepare", id="data-prepare-button", compact=True, tooltip="f5")
            yield ProgressBar(total=1, show_eta=False, id="data-progress")  # not pulsing: idle
            yield Label("", id="data-progress-text", markup=False)

    @property
    def source_row(self) -> FieldRow:
        return self.query_one("#data-source", FieldRow)

    @property
    def kind_row(self) -> FieldRow:
        return self.query_one("#data-tokenizer-kind", FieldRow)

    @property
    def vocab_row(self) -> FieldRow:
        return self.query_one("#data-vocab", FieldRow)

    @property
    def facts_text(self) -> Static:
        return self.query_one("#data-facts", Static)

    @property
    def preview(self) -> Static:
        return self.query_one("#data-preview", Static)

    def on_mount(self) -> None:
        self.watch(self.app, "config", self._config_changed)

    # -- data in ---------------------------------------------------------------------------

    def _config_changed(self, state: ConfigState | None) -> None:
        """The Config pane's state: mirror its data and tokenizer fields, look at a new source."""
        if state is None:
            return
        config, errors = state.config, state.errors
        self.config, self.errors = copy.deepcopy(config), dict(errors)
        source, kind, vocab = self.source_row, self.kind_row, self.vocab_row
        with self.prevent(Input.Changed, Select.Changed):  # mirroring is not choosing
            if not source.editor.has_focus and source.value != config.data.source:
                source.value = config.data.source
            choice = tokenizer_choice(config)
            if choice not in TOKENIZERS:  # a tiktoken encoding other than the offered one
                options = {**TOKENIZERS, choice: f"{config.tokenizer.name}: a tiktoken encoding"}
                select = kind.editor
                assert isinstance(select, Select)
                select.set_options([(label, value) for value, label in options.items()])
            if kind.value != choice:
                kind.value = choice
            if not vocab.editor.has_focus and vocab.value != str(config.tokenizer.vocab_size):
                vocab.value = str(config.tokenizer.vocab_size)
        vocab.display = config.tokenizer.kind == "bpe"
        for row in (source, kind, vocab):
            row.error = errors.get(row.key, "")
        if row_error := self.inspect_error:
            source.error = source.error or row_error
        self._look_if_new()

    def on_show(self) -> None:
        self._look_if_new()

    def _look_if_new(self) -> None:
        """Look inside a new source, but only while the pane is on screen: looking costs a
        subprocess, and a studio opened on another pane should not pay for it."""
        if self.config is None or "data.source" in self.errors or self.region.area == 0:
            return
        if self._subject() != self._inspected:
            self.action_inspect()

    def _subject(self) -> str:
        d = self.config.data if self.config else None
        return f"{d.source}\0{d.include}\0{d.text_column}" if d else ""

    # -- choosing --------------------------------------------------------------------------

    def action_builtin(self, name: str) -> None:
        self._choose({"data.source": f"builtin:{name}"})

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        button_id = event.button.id or ""
        if button_id.startswith("builtin-"):
            self.action_builtin(button_id.removeprefix("builtin-"))
        elif button_id == "data-prepare-button":
            self.action_prepare()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """A typed source (a path or a glob) is taken on Enter, or when the cursor leaves."""
        event.stop()
        self._take_typed_source(event.input)

    def on_input_blurred(self, event: Input.Blurred) -> None:
        self._take_typed_source(event.input)

    def _take_typed_source(self, editor: Input) -> None:
        if editor is not self.source_row.editor:
            return
        typed = editor.value.strip()
        if self.config is None or typed != self.config.data.source:
            self._choose({"data.source": typed})

    def on_field_row_changed(self, event: FieldRow.Changed) -> None:
        event.stop()
        row = event.row
        if row.id == "data-tokenizer-kind":
            kind, _, name = str(row.value).partition(":")
            values = {"tokenizer.kind": kind}
            if name:
                values["tokenizer.name"] = name
            if self.config is None or tokenizer_choice(self.config) != row.value:
                self._choose(values)
        elif row.id == "data-vocab":
            self._choose({"tokenizer.vocab_size": str(row.value).strip()})

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self._choose({"data.source": shown_path(event.path)})

    def on_data_tree_folder_chosen(self, event: DataTree.FolderChosen) -> None:
        event.stop()
        self._choose({"data.source": shown_path(event.path)})

    def _choose(self, values: dict[str, str]) -> None:
        if values.get("data.source") == "":
            self.source_row.error = f"must name a corpus: {SOURCE_HINT}"
            return
        self.post_message(ValuesChosen(values))

    # -- looking inside --------------------------------------------------------------------

    @work(exclusive=True, group="data-inspect")
    async def action_inspect(self) -> None:
        """Count documents, bytes and tokens, and preview the start (a subprocess)."""
        if self.config is None:
            return
        d = self.config.data
        subject = self._subject()
        self._inspected = subject
        # widgets taken before the wait: the app may be closing when the answer comes
        facts, preview, source = self.facts_text, self.preview, self.source_row
        facts.update(f"looking inside {d.source} ...")
        preview.update("")
        args = ["inspect", d.source, "--json", "--include", d.include]
        exit, out = await run_engine("engine.data", *args, "--text-column", d.text_column)
        if exit.code != 0:
            self.facts, self.inspect_error = None, first_error(exit)
            facts.update(f"cannot read it: {self.inspect_error}")
            source.error = self.inspect_error
            return
        try:
            info = json.loads(out)
        except ValueError:
            self.facts, self.inspect_error = None, "the engine's answer was not JSON"
            facts.update(self.inspect_error)
            return
        self.facts, self.inspect_error = info, ""
        source.error = self.errors.get("data.source", "")
        facts.update(describe_facts(info, self.config))
        preview.update(info.get("preview") or "(empty)")

    # -- preparing -------------------------------------------------------------------------

    @work(exclusive=True, group="data-prepare")
    async def action_prepare(self) -> None:
        """Tokenize the corpus into cached shards now, with progress (training would too)."""
        if self.config is None or self.errors:
            key, reason = next(iter(self.errors.items()), ("config", "not ready"))
            self.notify(f"{key}: {reason}", title="Cannot prepare", severity="error", markup=False)
            return
        self.ready = None
        folder = private_dir()
        path = save(self.config, folder / "config.toml")
        bar = self.query_one("#data-progress", ProgressBar)
        text = self.query_one("#data-progress-text", Label)
        button = self.query_one("#data-prepare-button", Button)
        bar.update(total=None, progress=0)
        text.update("starting ...")
        button.disabled = True

        def on_line(line: bytes) -> None:
            try:
                event = p.decode(line)
            except framing.ProtocolError:
                return
            if isinstance(event, p.Progress):
                self.progress = (event.done, event.total)
                bar.update(total=event.total, progress=event.done)
                text.update(progress_line(event))
            elif isinstance(event, p.DataReady):
                self.ready = event
                self.prepared = event_line(event, 0) or ""
                text.update(self.prepared)
            elif isinstance(event, p.Log):
                text.update(event.message)

        try:
            exit, _ = await run_engine(
                "engine.data", "prepare", str(path), "--events", on_line=on_line
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            button.disabled = False
        if exit.code != 0:
            bar.update(total=1, progress=0)
            text.update(f"failed: {first_error(exit)}")
            self.notify(first_error(exit), title="Prepare failed", severity="error", markup=False)
            return
        bar.update(total=1, progress=1)
        if self.ready is not None and self.ready.vocab_size:
            self.post_message(VocabKnown(self.config, self.ready.vocab_size))
        self.notify("The data is prepared; training will use the cached shards.", markup=False)


def describe_facts(info: dict, config: Config) -> str:
    """The counts a person decides with, in words."""
    kinds = ", ".join(f"{n} {k}" for k, n in info.get("kinds", {}).items())
    lines = [
        f"{info['source']}",
        f"  files       {info['files']:,} ({kinds})",
        f"  documents   {info['documents']:,}",
        f"  bytes       {info['bytes']:,} ({human(info['bytes'], 'B')})",
        f"  text        about {human(info['chars_estimate'])} characters, "
        f"{human(info['text_bytes_estimate'], 'B')} as UTF-8",
        f"  tokens      about {human(info['tokens_estimate'])} with cl100k_base",
    ]
    tok = config.tokenizer
    if tok.kind == "char":
        lines.append(
            f"              about {human(info['chars_estimate'])} with char (one per character)"
        )
    elif tok.kind == "tiktoken" and tok.name in TIKTOKEN_VOCAB and tok.name != "cl100k_base":
        lines.append(f"              ({tok.name} gives a similar count)")
    if info.get("replaced_in_sample"):
        lines.append(f"  not UTF-8   {info['replaced_in_sample']:,} bytes in the sample replaced")
    lines += ["", "preview"]
    return "\n".join(lines)
