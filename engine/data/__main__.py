"""`python -m engine.data prepare CONFIG` and `python -m engine.data inspect SOURCE`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from engine import metrics
from engine.contract import config
from engine.contract import events as p
from engine.contract.errors import cli_entry
from engine.contract.render import human
from engine.data import prepare, sources


def _prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    cfg = config.load(args.config, overrides)
    if args.events:
        sink = None

        def emit(event: p.Event) -> None:
            sys.stdout.buffer.write(p.encode(event))
            sys.stdout.flush()
    else:
        sink = metrics.console_for()
        emit = sink.write
    try:
        prepared = prepare(cfg, emit=emit, force=args.force)
    finally:
        if sink is not None:
            sink.close()
    if not args.events:
        m = prepared.manifest
        print(
            f"{prepared.dir}\n  tokenizer {cfg.tokenizer.kind}, vocab {m['vocab_size']:,}, "
            f"stored as {m['dtype']}; {human(m['bytes'], 'B')} of text, "
            f"{m['replaced_bytes']:,} bytes not UTF-8"
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    source = sources.resolve(args.source, text_column=args.text_column, include=args.include)
    info = sources.summary(source)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    kinds = ", ".join(f"{n} {k}" for k, n in info["kinds"].items())
    print(f"{info['source']}: {info['files']:,} files ({kinds})")
    print(f"  documents  {info['documents']:,}")
    print(f"  bytes      {info['bytes']:,} ({human(info['bytes'], 'B')})")
    print(f"  text       about {human(info['chars_estimate'])} characters, "
          f"{human(info['text_bytes_estimate'], 'B')} as UTF-8")  # fmt: skip
    print(f"  tokens     about {human(info['tokens_estimate'])} (cl100k_base on a sample)")
    if info["replaced_in_sample"]:
        print(f"  not UTF-8  {info['replaced_in_sample']:,} bytes in the sample were replaced")
    print("  preview")
    for line in info["preview"].splitlines()[:12]:
        print(f"    {line}")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.data",
        description="Prepare a corpus as cached token shards, or look inside one first.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser(
        "prepare",
        help="tokenize data.source into cached shards (training does this too)",
        description="Tokenize a config's data.source into cached token shards; any config key "
        "can be overridden as --section.key=value.",
    )
    prep.add_argument("config", help="a TOML config, e.g. presets/tiny.toml")
    prep.add_argument("--force", action="store_true", help="prepare anew even if cached")
    prep.add_argument(
        "--events", action="store_true", help="print progress as NDJSON events (for the studio)"
    )
    insp = commands.add_parser("inspect", help="documents, bytes, tokens and a preview of SOURCE")
    insp.add_argument("source", help="builtin:prose, builtin:code, a file, a folder or a glob")
    insp.add_argument("--text-column", default="text", help="jsonl field / parquet column")
    insp.add_argument("--include", default="*.txt", help="glob for files in a folder SOURCE")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    args, rest = parser.parse_known_args(argv)
    if args.command == "prepare":
        return _prepare(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _inspect(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
