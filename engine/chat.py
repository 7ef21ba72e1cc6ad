"""Conversations with a model: the terminal session and the studio's `--serve` loop.

Both talk through a ChatSession. With a base model, chat mode continues the text of the turns
before it (joined by newlines), and once that outgrows the context only its most recent
block_size tokens are kept. With a chat-tuned model (its tokenizer has the chat template) each
prompt is a user turn after the system prompt, the reply is the assistant's turn up to `<|end|>`,
and chat mode keeps the earlier turns, dropping the oldest whole turns when the context is full.
Outside chat mode every prompt stands alone.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import TextIO

from engine.chat_template import END, is_chat
from engine.chat_template import context as chat_context
from engine.contract.errors import UsageError
from engine.contract.events import (
    ChatEnd,
    ChatError,
    ChatReady,
    ChatReply,
    ChatRequestError,
    ChatToken,
    parse_chat_request,
)
from engine.contract.sampling import LIMITS, Sampling
from engine.generate import Completion, Stream
from engine.model import GPT
from engine.tokenizer import Tokenizer


class ChatSession:
    """A model, its tokenizer and the conversation so far."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, system: str = "") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.history = ""
        self.templated = is_chat(tokenizer)  # a chat-tuned model: turns through the template
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.last: Completion | None = None
        self.tokens_per_s = 0.0

    def reset(self) -> None:
        self.history = ""
        self.turns = []

    def _context(self, prompt: str, sampling: Sampling) -> str:
        """The conversation plus this prompt, leaving room for the reply."""
        block = self.model.cfg.block_size
        room = block - min(sampling.max_tokens, block // 2)
        return chat_context(self.tokenizer, prompt, room=room, system=self.system, turns=self.turns)

    def reply(self, prompt: str, sampling: Sampling, chat: bool = False) -> Iterator[str]:
        """The continuation, piece by piece. In chat mode even a reply cut short (Ctrl-C)
        joins the conversation, as far as it was shown."""
        if self.templated:
            if not chat:
                self.turns = []
            context = self._context(prompt, sampling)
            stops = tuple(dict.fromkeys((*sampling.stop, END, self.tokenizer.EOT)))
            sampling = replace(sampling, stop=stops)
        else:
            context = f"{self.history}\n{prompt}" if chat and self.history else prompt
        stream = Stream(self.model, self.tokenizer, [context], sampling)
        try:
            for _, piece in stream:
                yield piece
        finally:
            self.last = stream.completions[0]
            self.tokens_per_s = stream.tokens_per_s
            if chat and self.templated:
                self.turns += [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": self.last.text},
                ]
            elif chat:
                self.history = context + self.last.text


# ---------------------------------------------------------------------------------------------
# The terminal

# the REPL's name for each sampling setting; its type, limits and meaning come from LIMITS
SETTINGS: dict[str, str] = {
    "/temp": "temperature",
    "/tokens": "max_tokens",
    "/topk": "top_k",
    "/topp": "top_p",
    "/penalty": "repetition_penalty",
}

HELP = """\
{settings}
  /chat on|off  keep the conversation in context  now {chat}
  /system TEXT  the system prompt (chat-tuned models)  now {system!r}
  /reset        forget the conversation
  quit          leave (or Ctrl-D)
"""


def _help(sampling: Sampling, chat: bool, system: str) -> str:
    """/help: each setting with what it accepts (from the one sampling definition) and its value."""
    lines = []
    for command, name in SETTINGS.items():
        limit = LIMITS[name]
        arg = "N" if limit.kind is int else "X"
        value = getattr(sampling, name)
        now = f"{value:g}" if isinstance(value, float) else value
        lines.append(f"  {command + ' ' + arg:<13} {limit.label}: {limit.describe()}  now {now}")
    return HELP.format(settings="\n".join(lines), chat="on" if chat else "off", system=system)


def repl(
    session: ChatSession,
    sampling: Sampling,
    *,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    banner: str = "",
) -> int:
    """A line-based session: each line is a prompt or a command; replies print as they decode."""

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    chat = session.templated  # a chat-tuned model holds a conversation from the start
    write(banner + "Type a prompt; /help for commands, quit to leave.\n")
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return 0
        command = line.strip()
        if command in ("quit", "exit", "/quit"):
            return 0
        if command.startswith("/"):
            try:
                sampling, chat, message = _command(command, sampling, chat, session)
            except UsageError as err:
                message = f"error: {err}"
            write(message + "\n")
            continue
        try:
            for piece in session.reply(line, sampling, chat):
                write(piece)
        except KeyboardInterrupt:
            write(" [stopped]")
        except UsageError as err:
            write(f"error: {err}")
        write("\n")
        if session.last and session.last.truncated_prompt:
            block = session.model.cfg.block_size
            write(f"(the prompt was longer than the context: kept its last {block} tokens)\n")


def _command(
    command: str, sampling: Sampling, chat: bool, session: ChatSession
) -> tuple[Sampling, bool, str]:
    """Apply one /command; returns the new settings, chat mode and what to tell the user."""
    name, _, value = command.partition(" ")
    value = value.strip()
    if name == "/help":
        return (
            sampling,
            chat,
            _help(sampling, chat, session.system),
        )
    if name == "/system":
        if not session.templated:
            raise UsageError("/system needs a chat-tuned model; this one continues text")
        session.system = value
        session.reset()
        return (
            sampling,
            chat,
            f"system prompt set{'' if value else ' to none'}; conversation forgotten",
        )
    if name == "/reset":
        session.reset()
        return sampling, chat, "conversation forgotten"
    if name == "/chat":
        if value not in ("on", "off"):
            raise UsageError(f"/chat takes on or off, got {value!r}")
        if value == "off":
            session.reset()
        return sampling, value == "on", f"chat {value}"
    if name not in SETTINGS:
        raise UsageError(f"unknown command {name}; /help lists them")
    field = SETTINGS[name]
    limit = LIMITS[field]
    try:
        parsed = limit.kind(value)
    except ValueError:
        wanted = "a whole number" if limit.kind is int else "a number"
        raise UsageError(f"{name} takes {wanted}, got {value!r}") from None
    sampling = dataclasses.replace(sampling, **{field: parsed})  # checked against LIMITS
    return sampling, chat, f"{field.replace('_', ' ')} = {parsed}"


# ---------------------------------------------------------------------------------------------
# The studio's pipe


def serve(
    session: ChatSession,
    sampling: Sampling,
    *,
    source: str,
    step: int,
    lines: Iterable[str] = sys.stdin,
    out: TextIO = sys.stdout,
) -> int:
    """Answer one JSON request per line until the input ends (the chat messages of engine.contract.events).

    A bad request gets an error reply and the loop goes on; `sampling` holds the defaults a
    request does not set.
    """

    def send(reply: ChatReply) -> None:
        out.write(reply.to_json() + "\n")
        out.flush()

    model = session.model
    send(ChatReady(source, step, model.num_params(), model.cfg.block_size, session.templated))
    for line in lines:
        if not line.strip():
            continue
        rid = None
        try:
            request = parse_chat_request(line)
            rid = request.id
            if request.system is not None:
                if not session.templated:
                    raise UsageError("'system' needs a chat-tuned model; this one continues text")
                session.system = request.system
                session.reset()
            if request.reset:
                session.reset()
            if request.prompt is None:
                send(ChatEnd(rid, 0, 0.0, False))
                continue
            settings = request.sampling(sampling)
            for piece in session.reply(request.prompt, settings, request.chat):
                send(ChatToken(rid, piece))
            done = session.last
            assert done is not None
            send(ChatEnd(rid, done.tokens, round(session.tokens_per_s, 2), done.truncated_prompt))
        except ChatRequestError as err:
            send(ChatError(err.id, str(err)))
        except UsageError as err:
            send(ChatError(rid, str(err)))
        except Exception as err:  # one request that breaks generation must not end the server
            first = (str(err) or type(err).__name__).splitlines()[0][:300]
            print(
                f"warning: request {rid!r} failed: {type(err).__name__}: {first}", file=sys.stderr
            )
            send(
                ChatError(rid, f"this request could not be served ({type(err).__name__}: {first})")
            )
    return 0
