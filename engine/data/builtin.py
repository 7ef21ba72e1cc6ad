"""Corpora that every Python install already holds, so a fresh machine trains with no download.

`prose` is English: the interpreter's help topics (pydoc_data, the text behind `help("if")`) and
the longer docstrings of the standard library. `code` is the standard library's own source. Both
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

NAMES = ("prose", "code")
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
