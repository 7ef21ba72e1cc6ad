"""The Chat pane: talk to a checkpoint, or to the model that is training right now.

A checkpoint is served by `python -m engine.generate SOURCE --serve` (studio.jobs.ChatServer,
run by this pane's worker and posting its replies here as messages), which streams each answer a
few characters at a time. The live model has no server of its own:
a prompt goes up to the app as `AskLive`, on to the training run as a `sample` command, and its
answer comes back whole, generated from the live weights between two steps.

A chat-tuned model (the server's `ready` says so, or the live run's `start`) is talked to
through its chat template: each prompt is a user turn after the system prompt field, the answer
is the assistant's turn, and with `remember` (on by default for such a model) the earlier turns
come along. The server keeps its own conversation; for the live model the pane keeps it and
sends it with each question. A base model continues the text, as before.

Streamed text is not written into the page per piece: pieces collect in the exchange and a
timer shows them twenty times a second, so a fast model cannot flood the screen with relayouts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Label, Select, Static

from engine.contract import events as p
from engine.contract.rundir import list_runs
from engine.contract.sampling import DEFAULTS, FORM_FIELDS, LIMITS
from studio.jobs import ChatServer, first_error
from studio.messages import AskLive, ChatExited, ChatNote, ChatReply, ConfigState
from studio.widgets.dialogs import PathDialog
from studio.widgets.form import FieldRow

LIVE = "live"  # the Select value of the model training right now
SHOW_S = 0.05

# the form's fields, defaults and limits all come from the one sampling definition
SETTINGS: dict[str, str] = {name: LIMITS[name].describe() for name in FORM_FIELDS}


def check_setting(name: str, text: str) -> tuple[Any, str]:
    """(value, "") or (None, what is wrong), by the limits the engine applies too."""
    limit = LIMITS[name]
    try:
        value = limit.kind(text.strip())
    except ValueError:
        return None, f"{text.strip()!r} is not {limit.describe()}"
    return (value, "") if limit.accepts(value) else (None, f"{value} is not {limit.describe()}")


@dataclass
class Exchange:
    """One prompt and its answer as it grows."""

    id: str
    model: str
    prompt: str
    answer: str = ""
    pieces: int = 0  # how many streamed pieces it arrived in
    note: str = ""  # how it ended: tokens and speed, or the error
    done: bool = False
    widget: Static | None = None
    shown: str = ""  # what the widget last showed
    templated: bool = False  # asked as a user turn of a chat-tuned model: the answer stands alone


class ChatPane(Vertical):
    """Pick a model, set how it samples, type a prompt, read the answer as it is written."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+o", "open", "Open checkpoint", tooltip="Chat with a run folder or .pt file"),
        Binding("ctrl+n", "new_chat", "New chat", tooltip="Clear the history and the context"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.out_dir = Path("runs")
        self.live_run: str | None = None  # the name of the run training now, if any
        self.source = ""  # LIVE, or the run folder / checkpoint being served
        self.server: ChatServer | None = None
        self.ready: p.ChatReady | None = None  # the server's `ready` reply
        self.history: list[Exchange] = []
        self._ids = itertools.count(1)
        self._fresh = True  # the next request starts a new conversation
        self._choices: list[tuple[str, str]] = []
        self.live_chat = False  # the live run is chat-tuned
        self.turns: list[dict[str, str]] = []  # the live chat-tuned conversation so far
        self._auto_remember = False  # `remember` was turned on for a chat-tuned model

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-top"):
            yield Label("Model", classes="chat-label")
            yield Select([], prompt="pick a run, or open a checkpoint (ctrl+o)", id="chat-model")
            yield Static("no model yet", id="chat-model-info", markup=False)
        with Horizontal(id="chat-body"):
            yield VerticalScroll(id="chat-history")
            with Vertical(id="chat-settings"):
                yield Label("Sampling", classes="box-title")
                for name, accepted in SETTINGS.items():
                    default = str(getattr(DEFAULTS, name))
                    yield FieldRow(name, default, placeholder=accepted, id=f"chat-{name}")
                yield FieldRow("remember", False, id="chat-remember")
                yield Static(
                    "remember: each prompt continues the conversation so far",
                    id="chat-remember-hint",
                    markup=False,
                )
                with Vertical(id="chat-template-box"):
                    yield Label("Chat-tuned model", classes="box-title")
                    yield FieldRow(
                        "system", "", placeholder="e.g. Answer briefly.", id="chat-system"
                    )
                    yield Static(
                        "system: the assistant's instructions; changing it starts a new "
                        "conversation",
                        id="chat-system-hint",
                        markup=False,
                    )
        yield Input(placeholder="Type a prompt and press Enter", id="chat-prompt")

    @property
    def model_select(self) -> Select:
        return self.query_one("#chat-model", Select)

    @property
    def history_box(self) -> VerticalScroll:
        return self.query_one("#chat-history", VerticalScroll)

    @property
    def model_info(self) -> Static:
        return self.query_one("#chat-model-info", Static)

    @property
    def prompt(self) -> Input:
        return self.query_one("#chat-prompt", Input)

    def setting(self, name: str) -> FieldRow:
        """The field of a sampling setting (or `remember`, or `system`)."""
        return self.query_one(f"#chat-{name}", FieldRow)

    @property
    def templated(self) -> bool:
        """Whether the chosen model is chat-tuned: prompts are user turns of its template."""
        if self.source == LIVE:
            return self.live_chat
        return self.ready is not None and self.ready.chat_tuned

    @property
    def choices(self) -> list[tuple[str, str]]:
        """The models offered: (label, LIVE or a run folder or checkpoint)."""
        return list(self._choices)

    def on_mount(self) -> None:
        self.set_interval(SHOW_S, self._show_growth)
        self.watch(self.app, "config", self._config_changed)
        self.watch(self.app, "live_run", self._live_run_changed, init=False)
        self.watch(self.app, "live_chat", self._live_chat_changed, init=False)
        self.refresh_models()
        self._show_mode()

    def on_show(self) -> None:
        """Opening the pane with no model chosen picks the likeliest one: the run training
        now, else the newest run with a checkpoint, so a new user can just type."""
        self.refresh_models()
        if not self.source and self._choices:
            self.use(self._choices[0][1])

    # -- data in ---------------------------------------------------------------------------

    def _config_changed(self, state: ConfigState | None) -> None:
        if state is not None and Path(state.config.out_dir) != self.out_dir:
            self.out_dir = Path(state.config.out_dir)
            self.refresh_models()

    def _live_run_changed(self, name: str | None) -> None:
        self.live_run = name
        self.refresh_models()
        if name is None and self.source == LIVE:
            self.source = ""
            self._info("the live run has ended: pick its checkpoints from the list")

    def _live_chat_changed(self, chat_tuned: bool) -> None:
        self.live_chat = chat_tuned
        self._show_mode()

    def _show_mode(self) -> None:
        """The system prompt field and `remember` on for a chat-tuned model (it holds a
        conversation); a base model hides the field and gets `remember` back as it was."""
        templated = self.templated
        self.query_one("#chat-template-box").display = templated
        remember = self.setting("remember")
        if templated and not remember.value:
            remember.value, self._auto_remember = True, True
        elif not templated and self._auto_remember:
            remember.value, self._auto_remember = False, False

    def refresh_models(self) -> None:
        """Offer the live run and every run under out_dir that has a checkpoint."""
        choices = []
        if self.live_run:
            choices.append((f"● {self.live_run} (training now: live weights)", LIVE))
        for run in list_runs(self.out_dir):
            if run.checkpoints:
                choices.append((f"{run.name} (step {run.step}, {run.shape})", str(run.path)))
        if self.source and self.source != LIVE and all(v != self.source for _, v in choices):
            choices.append((self.source, self.source))
        select = self.model_select
        with self.prevent(Select.Changed):
            if choices != self._choices:
                self._choices = choices
                select.set_options(choices)
            known = any(v == self.source for _, v in choices)
            if self.source and known and select.value != self.source:
                select.value = self.source

    # -- choosing a model ------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "chat-model":
            return
        event.stop()
        if isinstance(event.value, str) and event.value != self.source:
            self.use(event.value)

    @work(exclusive=True, group="chat-model")
    async def action_open(self) -> None:
        """Ask for a run folder or checkpoint file and chat with it."""
        answer = await self.app.push_screen_wait(
            PathDialog("Chat with a run folder or a .pt checkpoint", action="Open")
        )
        if answer:
            path = Path(answer).expanduser()
            if not path.exists():
                self.notify(
                    f"{path}: no such run folder or checkpoint file",
                    title="Not opened",
                    severity="error",
                    markup=False,
                )
                return
            self.use(str(path))

    def use(self, source: str) -> None:
        """Chat with `source`: LIVE, a run folder or a checkpoint file."""
        self.source = source
        self._fresh = True
        self.turns = []
        if source != LIVE:
            self.ready = None  # the model's own `ready` says whether it is chat-tuned
        self.refresh_models()
        self._show_mode()
        if source == LIVE:
            self._close_server()
            self._info(f"{self.live_run}: the live weights; answers arrive between two steps")
            return
        self._start_server(source)

    @work(exclusive=True, group="chat-server")
    async def _start_server(self, source: str) -> None:
        await self._close_server_now()
        self.ready = None
        self._info(f"loading {source} ...")
        server = ChatServer(self)
        self.server = server
        self._serve(server, source)

    @work(exclusive=True, group="chat-serve", exit_on_error=False)
    async def _serve(self, server: ChatServer, source: str) -> None:
        try:
            await server.run(source)
        except OSError as err:
            self._info(f"could not start the chat server: {err}", error=True)

    def _close_server(self) -> None:
        if self.server is not None:
            self.run_worker(self._close_server_now(), group="chat-close")

    async def _close_server_now(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.close()

    async def close(self) -> None:
        """The studio is quitting: end the chat server."""
        await self._close_server_now()

    # -- asking ----------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-prompt":
            return
        event.stop()
        if self.send(event.value):
            event.input.value = ""

    def send(self, prompt: str) -> bool:
        """Send a prompt to the chosen model; False (with the reason shown) when it cannot go."""
        settings, problem = self._settings()
        if problem:
            self.notify(problem, title="Cannot send: fix this first", severity="error")
            return False
        if not self.source:
            self.notify("Pick a model first (the list at the top, or ctrl+o).", severity="error")
            return False
        if any(not e.done for e in self.history):
            self.notify("Wait for the answer being written first.", severity="warning")
            return False
        ask_id = f"chat-{next(self._ids)}"
        remember = bool(self.setting("remember").value)
        templated = self.templated
        system = str(self.setting("system").value) if templated else ""
        if self.source == LIVE:
            if not remember:
                self.turns = []
            request = p.SampleRequest(
                prompt=prompt, id=ask_id, system=system, turns=list(self.turns), **settings
            )
            name = self.live_run or "live"
            self._add(
                Exchange(ask_id, name, prompt, note="waiting for a step", templated=templated)
            )
            self.post_message(AskLive(request))
            return True
        if self.server is None or self.ready is None:
            self.notify("The model is still loading; try again in a moment.", severity="warning")
            return False
        chat = p.ChatRequest(
            id=ask_id, prompt=prompt, chat=remember, reset=self._fresh,
            system=system if templated and self._fresh else None, **settings,
        )  # fmt: skip
        self._fresh = False
        self._add(Exchange(ask_id, Path(self.source).name, prompt, templated=templated))
        self.server.ask(chat)
        return True

    def _settings(self) -> tuple[dict[str, Any], str]:
        values, problem = {}, ""
        for name in SETTINGS:
            row = self.setting(name)
            value, error = check_setting(name, str(row.value))
            row.error = error
            if error and not problem:
                problem = f"{name}: {error}"
                row.editor.focus()
            values[name] = value
        return values, problem

    def on_field_row_changed(self, event: FieldRow.Changed) -> None:
        event.stop()
        if event.row.key in SETTINGS:  # validation as you type
            event.row.error = check_setting(event.row.key, str(event.row.value))[1]
        elif event.row.key == "system" and not self._fresh:
            self._fresh, self.turns = True, []
            self._info("system prompt changed: the next prompt starts a new conversation")

    def action_new_chat(self) -> None:
        """Forget the history on screen and the conversation the model remembers."""
        self.history.clear()
        self.history_box.remove_children()
        self._fresh = True
        self.turns = []

    # -- answers ---------------------------------------------------------------------------

    def live_answer(self, sample: p.Sample) -> None:
        """The training run's answer to an AskLive."""
        exchange = self._find(sample.id)
        if exchange is not None and sample.error:
            exchange.note, exchange.done = f"error: {sample.error}", True
        elif exchange is not None:
            exchange.answer = sample.text
            exchange.note = f"live weights at step {sample.step}"
            exchange.done = True
            if exchange.templated:  # the turn joins the conversation the next question carries
                self.turns += [
                    {"role": "user", "content": exchange.prompt},
                    {"role": "assistant", "content": sample.text},
                ]
                self._fresh = False

    def live_refused(self, request_id: str) -> None:
        exchange = self._find(request_id)
        if exchange is not None:
            exchange.note, exchange.done = "not sent: the run is not connected", True

    def on_chat_reply(self, message: ChatReply) -> None:
        message.stop()
        reply = message.reply
        if isinstance(reply, p.ChatReady):
            self.ready = reply
            self._show_mode()
            self._info(
                f"{Path(reply.checkpoint or self.source).name} · step {reply.step} · "
                f"{reply.params:,} parameters · context {reply.block_size}"
                + (" · chat-tuned: prompts are user turns" if reply.chat_tuned else "")
            )
            return
        exchange = self._find(str(getattr(reply, "id", None)))
        if exchange is None:
            return
        if isinstance(reply, p.ChatToken):
            exchange.answer += reply.text
            exchange.pieces += 1
        elif isinstance(reply, p.ChatEnd):
            cut = " · the prompt was cut to fit the context" if reply.truncated_prompt else ""
            exchange.note = f"{reply.tokens} tokens at {reply.tokens_per_s:.0f}/s{cut}"
            exchange.done = True
        elif isinstance(reply, p.ChatError):
            exchange.note, exchange.done = f"error: {reply.message}", True

    def on_chat_note(self, message: ChatNote) -> None:
        message.stop()
        self._info(message.text, error=True)

    def on_chat_exited(self, message: ChatExited) -> None:
        message.stop()
        exit = message.exit
        self.server, self.ready = None, None
        for exchange in self.history:
            if not exchange.done:
                exchange.note, exchange.done = "the model's process ended", True
        message = first_error(exit)
        self._info(f"the chat server stopped: {message}", error=True)
        self.notify(message, title="Chat ended", severity="error", markup=False)

    # -- showing ---------------------------------------------------------------------------

    def _find(self, ask_id: str) -> Exchange | None:
        return next((e for e in self.history if e.id == ask_id), None)

    def _add(self, exchange: Exchange) -> None:
        self.history.append(exchange)
        exchange.widget = Static("", classes="chat-exchange", markup=False)
        self.history_box.mount(exchange.widget)
        self._show(exchange)

    def _show_growth(self) -> None:
        for exchange in self.history[-3:]:
            self._show(exchange)

    def _show(self, exchange: Exchange) -> None:
        if exchange.widget is None:
            return
        tail = f"\n  [{exchange.note}]" if exchange.note else ""
        cursor = "" if exchange.done else " ▌"
        said = exchange.answer if exchange.templated else exchange.prompt + exchange.answer
        text = f"you › {exchange.prompt}\n{exchange.model} › {said}{cursor}{tail}"
        if text != exchange.shown:
            exchange.shown = text
            exchange.widget.update(text)
            self.history_box.scroll_end(animate=False)

    def _info(self, text: str, *, error: bool = False) -> None:
        info = self.model_info
        info.update(text)
        info.set_class(error, "-error")
