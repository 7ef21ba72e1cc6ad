"""Every bad input gets one line naming the thing at fault, and exit code 2: the table of cases is
the one in the README's Troubleshooting section, run here row by row.

A row is `| kind | input | the line says |`. Kinds: `train`, `generate` and `config` run that
command's main() in this process with the input as its arguments (split like a shell would);
`command` and `event` decode the input as a line from the studio or the engine; `serve` sends it
to `--serve` as a request. {NAME} in an input is a file made by the fixture below.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from test_train import tiny_config

from engine.chat import ChatSession, serve
from engine.config import main as config_main
from engine.contract import config
from engine.contract import events as p
from engine.contract.sampling import Sampling
from engine.generate.__main__ import main as generate_main
from engine.model import GPT
from engine.tokenizer import CharTokenizer
from engine.train import main as train_main
from engine.train import train

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def table() -> list[tuple[str, str, str]]:
    """The rows of the README's bad-input table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("<!-- bad-inputs -->") : text.index("<!-- /bad-inputs -->")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("kind", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append(tuple(c.removeprefix("`").removesuffix("`") for c in cells))
    return rows


ROWS = table()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every {NAME} the table uses."""
    root = tmp_path_factory.mktemp("bad")
    cfg = tiny_config(root / "base", train__max_steps=2, checkpoint__interval=2)
    train(cfg, quiet=True)
    names: dict[str, str] = {}
    tiny = config.save(cfg, root / "tiny.toml")
    names["TINY"] = str(tiny)
    names["CKPT"] = str(cfg.run_dir)
    names["MISSING"] = str(root / "missing")
    (root / "file").write_text("just a file\n")
    names["FILE"] = str(root / "file")
    names["DIR"] = str(root)
    (root / "empty_run").mkdir()
    names["EMPTY_RUN"] = str(root / "empty_run")
    (root / "empty.pt").write_bytes(b"")
    names["EMPTY_PT"] = str(root / "empty.pt")
    (root / "garbage.pt").write_bytes(os.urandom(4096))
    names["GARBAGE_PT"] = str(root / "garbage.pt")
    torch.save({"model": {}, "config": {}, "x": ValueError("code")}, root / "code.pt")
    names["CODE_PT"] = str(root / "code.pt")
    (root / "not.toml").write_text("this = is = not toml\n")
    names["NOT_TOML"] = str(root / "not.toml")
    (root / "empty.txt").write_text("")
    names["EMPTY_TXT"] = str(root / "empty.txt")
    (root / "tiny.txt").write_text("the end.\n")
    names["TINY_TXT"] = str(root / "tiny.txt")
    os.mkfifo(root / "fifo")
    names["FIFO"] = str(root / "fifo")
    # a prepared dataset, then copies of its cache with a broken manifest and a garbage shard
    cache = Path(cfg.data.cache_dir)
    for name, spoil in (("BAD_MANIFEST", _drop_manifest_keys), ("GARBAGE_SHARD", _garble_shard)):
        copy = root / name.lower()
        shutil.copytree(cache, copy)
        spoil(copy)
        names[name] = str(copy)
    names["PROMPTS_DIR"] = str(root)
    names["DEEP"] = "[" * 50_000
    names["HUGE"] = "9" * 5000
    return names


def _drop_manifest_keys(cache: Path) -> None:
    for manifest in cache.rglob("manifest.json"):
        record = json.loads(manifest.read_text())
        record.pop("splits")
        manifest.write_text(json.dumps(record))


def _garble_shard(cache: Path) -> None:
    for shard in cache.rglob("*.bin"):
        shard.write_bytes(os.urandom(shard.stat().st_size))


def fill(text: str, names: dict[str, str]) -> str:
    return re.sub(r"\{([A-Z_]+)\}", lambda m: names[m.group(1)], text)


def run_command(main, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(1)
    tok = CharTokenizer.train(["the cat sat on a mat\n"])
    model = GPT(config.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=24, vocab_size=64))
    return ChatSession(model.eval(), tok)


def answer(kind: str, text: str, files: dict[str, str], session, tmp_path) -> tuple[int, str]:
    """The exit code and what the user sees, for one row."""
    if kind in ("train", "generate", "config"):
        main = {"train": train_main, "generate": generate_main, "config": config_main}[kind]
        argv = [fill(a, files) for a in shlex.split(text)]
        if kind == "train":  # each row trains (if it ever does) in a folder of its own
            argv.insert(1, f"--out_dir={tmp_path / 'runs'}")
        return run_command(main, argv)
    line = fill(text, files)
    if kind in ("command", "event"):
        try:
            (p.decode_command if kind == "command" else p.decode)(line)
        except p.ProtocolError as err:
            return 2, f"error: {err}\n"
        return 0, ""
    if kind == "serve":
        out = io.StringIO()
        small = Sampling(max_tokens=2, temperature=0)
        serve(session, small, source="x", step=0, lines=[line], out=out)
        replies = [json.loads(r) for r in out.getvalue().split("\n")[1:] if r]
        errors = [r["message"] for r in replies if r["type"] == "error"]
        return (2, f"error: {errors[0]}\n") if len(replies) == 1 and errors else (0, "")
    raise AssertionError(f"unknown kind {kind!r} in the README table")


def test_the_table_has_at_least_60_cases_across_every_boundary():
    assert len(ROWS) >= 60
    assert {k for k, _, _ in ROWS} >= {"train", "generate", "config", "command", "event", "serve"}


@pytest.mark.parametrize(("kind", "text", "says"), ROWS, ids=[f"{k}:{t[:40]}" for k, t, _ in ROWS])
def test_a_bad_input_is_one_line_naming_the_fault_and_exit_code_2(
    kind, text, says, files, session, tmp_path
):
    code, err = answer(kind, text, files, session, tmp_path)
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}; stderr: {err[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-800:]
    assert "Traceback" not in err
    assert says in lines[0], lines[0]
