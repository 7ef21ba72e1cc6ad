"""Corpora that every Python install already holds, so a fresh machine trains with no download.

`prose` is English: the interpreter's help topics (pydoc_data, the text behind `help("if")`) and
the longer docstrings of the standard library. `code` is the standard library's own source.
`chat` is conversations made from the same two sources, as JSONL in the `messages` layout: a user
asks about a help topic or a function and the assistant answers with its first paragraph. All
change only with the Python version, which is part of their fingerprint.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from pathlib import Path

from engine.contract.errors import UsageError
from engine.contract.render import EOT

NAMES = ("prose", "code", "chat")
VERSION = 1  # bump when what a builtin corpus holds changes
MIN_DOCSTRING = 200  # shorter ones are mostly "Return self." fragments, not prose
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"}
)


def check_name(name: str, setting: str = "data.source") -> str:
    if name not in NAMES:
        known = ", ".join(f"builtin:{n}" for n in NAMES)
        raise UsageError(f"{setting}: unknown built-in corpus 'builtin:{name}'; choose {known}")
    return name


def identity(name: str) -> str:
    """What the corpus depends on, for the fingerprint: no text needs to be read."""
    return f"builtin:{name} v{VERSION} python {sys.version}"


def stdlib_files() -> list[Path]:
    """The standard library's .py files in a stable order, without tests or installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        found.extend(Path(folder, f) for f in sorted(files) if f.endswith(".py"))
    return found


@functools.cache
def prose() -> bytes:
    """Help topics, then docstrings, as one text with an end-of-text marker between documents."""
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    seen = set(docs)
    for doc in _docstrings():
        if doc not in seen:
            seen.add(doc)
            docs.append(doc)
    return EOT.join(doc + "\n" for doc in docs).encode("utf-8")


SYSTEM = "You are a helpful assistant who answers questions about Python briefly."
MAX_ANSWER = 600  # characters: the first paragraph, cut at a sentence end past this


@functools.cache
def chat() -> bytes:
    """Conversations as JSONL: one question per help topic and per documented function or
    class, every third with a system prompt and every fourth with a second question."""
    import json

    pairs = _topic_pairs() + _docstring_pairs()
    lines = []
    i = 0
    while i < len(pairs):
        messages = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
        turns = 2 if i % 4 == 0 and i + 1 < len(pairs) else 1
        for question, answer in pairs[i : i + turns]:
            messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
        i += turns
    return ("\n".join(lines) + "\n").encode("utf-8")


def _first_paragraph(text: str) -> str:
    """The first paragraph of prose, lines joined, cut after a sentence past MAX_ANSWER."""
    for block in text.strip().split("\n\n"):
        lines = [line.strip() for line in block.splitlines()]
        if not lines or set(lines[-1]) <= set("*=-") or lines[0].startswith((">>>", "::")):
            continue  # a heading underline or an example
        para = " ".join(lines)
        if len(para) > MAX_ANSWER:
            cut = para.find(". ", MAX_ANSWER // 2)
            para = para[: cut + 1] if 0 < cut < MAX_ANSWER else para[:MAX_ANSWER].rstrip() + "..."
        return para
    return ""


def _topic_pairs() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        text = topics[name].strip()
        title = text.splitlines()[0].strip()
        body = _first_paragraph(text.split("\n", 2)[-1] if title else text)
        if body and len(title) < 80:
            out.append((f"Tell me about {title[0].lower() + title[1:]}.", body))
            out.append((f"Explain '{name}' in Python.", body))
    return out


def _docstring_pairs() -> list[tuple[str, str]]:
    import ast

    out = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                answer = _first_paragraph(doc) if doc else ""
                if len(answer) >= 40:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    out.append((f"What does the {kind} {module}.{node.name} do?", answer))
    return out


def _docstrings() -> list[str]:
    import ast

    docs = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a few files are templates or deliberately broken
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING:
                    docs.append(doc)
    return docs
