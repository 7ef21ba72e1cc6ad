"""The chat template: conversations as token ids, and which of those ids the model learns.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": str}` messages
(the layout transformers and OpenAI use). Each message becomes

    <|role|> content <|end|>

with the role tags and `<|end|>` as special tokens that ordinary text can never spell: they get
the ids just past the base tokenizer's vocabulary, whatever its kind (tiktoken, trained BPE or
characters). `engine.tokenizer.ChatTokenizer` wraps any base tokenizer with them, and its spec (stored in every
checkpoint) is the base spec plus a "chat" entry, so a chat-tuned checkpoint says so itself.

`JINJA` renders the same text for transformers' `apply_chat_template`; the exported tokenizer
declares the tags as added special tokens, so its ids equal `encode_chat`'s (a test holds us to
that). Only assistant content and its closing `<|end|>` are trained: the model learns to answer
and to stop, not to write the user's turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.contract.errors import UsageError
from engine.tokenizer import END, ROLES, SPECIALS, ChatTokenizer, Tokenizer

__all__ = [
    "END", "JINJA", "ROLES", "SPECIALS", "ChatTokenizer", "context", "encode_chat", "render",
]  # fmt: skip

JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The template as text, what `JINJA` renders: `encode(..., allow_special=True)` of it
    gives `encode_chat`'s ids when no content spells a tag."""
    text = "".join(f"<|{m['role']}|>{m['content']}{END}" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


def context(
    tokenizer: Tokenizer,
    prompt: str,
    *,
    room: int,
    system: str = "",
    turns: Sequence[dict[str, str]] = (),
) -> str:
    """The template's text for `turns` and then `prompt` as a user turn, ready for the
    assistant's reply, after the system prompt: the oldest whole exchanges are dropped until it
    is at most `room` tokens (the context left for the reply), the new prompt never."""
    asked = [{"role": "user", "content": prompt}]
    head = [{"role": "system", "content": system}] if system else []
    kept = list(turns)
    while True:
        text = render([*head, *kept, *asked], add_generation_prompt=True)
        if not kept or len(tokenizer.encode(text, allow_special=True)) <= room:
            return text
        kept = kept[2:]


def is_chat(tokenizer: Tokenizer) -> bool:
    return isinstance(tokenizer, ChatTokenizer)


def with_chat(tokenizer: Tokenizer) -> ChatTokenizer:
    """The tokenizer with the chat tokens added (unchanged if it has them)."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)


# --- conversations ----------------------------------------------------------------------------


@dataclass
class Encoded:
    """A conversation's ids and, per id, whether the model is trained to produce it."""

    ids: list[int]
    trained: list[bool]


def check_messages(messages: Any, where: str = "conversation") -> list[dict[str, str]]:
    """Messages as a list of {role, content} with known roles; a fault names the message."""
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise UsageError(f"{where}: message {n} needs a 'role' and a text 'content'")
        if m.get("role") not in ROLES:
            raise UsageError(
                f"{where}: message {n} has role {m.get('role')!r}; roles are {', '.join(ROLES)}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def encode_chat(
    tokenizer: ChatTokenizer,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
) -> Encoded:
    """The template's ids for `messages`; `add_generation_prompt` opens an assistant turn."""
    ids: list[int] = []
    trained: list[bool] = []
    for m in messages:
        content = tokenizer.encode(m["content"])
        answer = m["role"] == "assistant"
        ids += [tokenizer.role_id(m["role"]), *content, tokenizer.end_id]
        trained += [False] + [answer] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(tokenizer.role_id("assistant"))
        trained.append(False)
    return Encoded(ids, trained)


def messages_of(record: dict[str, Any], where: str) -> list[dict[str, str]] | None:
    """A record's conversation: its 'messages', or a 'prompt'/'completion' pair (with an
    optional 'system'); None when the record holds neither."""
    if "messages" in record:
        return check_messages(record["messages"], where)
    if "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise UsageError(f"{where}: 'prompt' and 'completion' must both be text")
        out = []
        if isinstance(record.get("system"), str) and record["system"]:
            out.append({"role": "system", "content": record["system"]})
        return [
            *out,
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
    return None
