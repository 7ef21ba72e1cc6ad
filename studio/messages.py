"""Every message the studio's parts send each other, in one place.

Data flows down by attributes (the App's `config` and `live_run`, which panes watch) and up by
these messages. Engine adapters (studio.jobs, studio.link) run in workers and post the first
group to the widget that started them; panes post the second group up to the App, which hands
what one pane asked for to the pane that can do it.

Textual names a message's handler after its class: `RunEvents` is heard by `on_run_events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from engine.contract import events as p
from engine.contract.config import Config

if TYPE_CHECKING:
    from studio.jobs import Exit

# -- from the engine adapters ------------------------------------------------------------------


@dataclass
class VocabKnown(Message):
    """Data for `config` was prepared: its tokenizer has `vocab_size` ids (no longer a guess)."""

    config: Config
    vocab_size: int


@dataclass
class RunEvents(Message):
    """Events of a run, in order: from a training job's socket or a metrics.jsonl being read."""

    events: list[p.Event]


@dataclass
class EngineConnected(Message):
    """The training engine dialled in and gave the right token: commands can go to it now."""


@dataclass
class EngineNote(Message):
    """Something went wrong on the wire (a dropped line, a stranger refused); the run goes on."""

    text: str


@dataclass
class EngineExited(Message):
    """The training engine's process ended; its last words are in `exit`."""

    exit: Exit


@dataclass
class Detached(Message):
    """The connection to an attached run ended: it finished (or stopped), or was lost."""

    finished: bool


@dataclass
class ChatReply(Message):
    """One reply of the chat server: ChatReady, ChatToken, ChatEnd or ChatError."""

    reply: p.ChatReply


@dataclass
class ChatNote(Message):
    """The chat server wrote a line that was not a reply."""

    text: str


@dataclass
class ChatExited(Message):
    """The chat server's process ended without being asked to."""

    exit: Exit


# -- from the panes, to the App ----------------------------------------------------------------


@dataclass(frozen=True)
class ConfigState:
    """What the Config pane holds: the last valid config and what is wrong with the form now.

    The App keeps the current one in its `config` reactive; every pane that needs the config
    watches that, so no pane is handed it by hand.
    """

    config: Config
    errors: dict[str, str] = field(default_factory=dict)
    source: str = ""  # preset:NAME, a file path, or empty

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass
class ConfigChanged(Message):
    """The Config pane's state moved: a new valid config, or it became (in)valid."""

    state: ConfigState


@dataclass
class ValuesChosen(Message):
    """Fields to set in the Config pane, as text typed into them (the Dataset pane's choices,
    a new run name)."""

    values: dict[str, bool | str]


@dataclass
class FixConfig(Message):
    """Start was refused because this field is at fault: show it to the user."""

    key: str


@dataclass
class RunChanged(Message):
    """The Train pane's run started or ended: the Chat and Runs panes care which one is live."""

    name: str | None
    run_dir: Path | None
    chat_tuned: bool = False  # known from its `start`: the live model answers as a chat model


@dataclass
class SampleAnswered(Message):
    """A sample the studio asked the live run for (it has a request id), for the Chat pane."""

    sample: p.Sample


@dataclass
class AskLive(Message):
    """A prompt for the model training now, to be sent to the run as a `sample` command."""

    request: p.SampleRequest


@dataclass
class ResumeRun(Message):
    """Continue this run from its latest checkpoint in the Train pane."""

    run_dir: Path


@dataclass
class AttachRun(Message):
    """Watch and command this run, training elsewhere, in the Train pane."""

    run_dir: Path


@dataclass
class ChatWith(Message):
    """Open the Chat pane on this run's best checkpoint."""

    run_dir: Path


@dataclass
class FineTune(Message):
    """Open the Config pane on this fine-tune of a run (`source` says where it came from)."""

    config: Config
    source: str
