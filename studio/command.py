"""The headless command line that reproduces what the studio's form holds.

A config in the studio came from a preset or a file and was then edited; on a server the same
run is `python -m engine.train THAT_SOURCE --section.key=value ...` with one override per field
that differs from the source. Each value is written as engine.config reads an override (a TOML
value, or a bare string) and quoted for a POSIX shell.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import tomli_w
import tomllib

from engine.contract.config import Config, ConfigError, load, presets, to_dict
from engine.contract.render import shown_path


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 3e-4}} -> {"train.lr": 3e-4}: the keys as --section.key names them."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def override_text(value: object) -> str:
    """A value as an override spells it: TOML for numbers, booleans and lists (on one line);
    a string bare where TOML would not read it as something else, else quoted."""
    if isinstance(value, list):
        return "[" + ", ".join(override_text(v) if not isinstance(v, str) else _toml(v)
                               for v in value) + "]"  # fmt: skip
    if isinstance(value, str) and value and value == value.strip() and _not_toml(value):
        return value
    return _toml(value)


def _toml(value: object) -> str:
    return tomli_w.dumps({"v": value})[4:-1]


def _not_toml(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return True
    return False


def base_of(source: str) -> tuple[str, Config]:
    """The command's config argument for a form filled from `source`, and what it loads to: a
    preset by name (shipped with the engine, so it works in any folder), else the file. A form
    with no file behind it starts from the smallest preset."""
    kind, _, name = source.partition(":")
    found = presets()
    if kind == "preset" and name in found:
        return name, load(found[name])
    if source and not source.startswith("preset:") and Path(source).is_file():
        return shown_path(Path(source)), load(source)
    name = next(iter(found))
    return name, load(found[name])


def headless_command(config: Config, source: str) -> str:
    """`python -m engine.train SOURCE --key=value ...` that trains exactly `config`."""
    try:
        argument, base = base_of(source)
    except (ConfigError, OSError):
        argument, base = "", Config()
    now, then = flatten(to_dict(config)), flatten(to_dict(base))
    overrides = [
        f"--{key}={override_text(value)}"
        for key, value in now.items()
        if then.get(key) != value and value is not None
    ]
    return shlex.join(["python", "-m", "engine.train", argument, *overrides])
