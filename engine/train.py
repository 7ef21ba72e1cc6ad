"""`python -m engine.train CONFIG.toml [--section.key=value ...] [--resume [PATH]]`.

The command: parse, then `engine.trainer.train` builds the Trainer, trains and closes it.
"""

from __future__ import annotations

import argparse
import os

from engine.contract import config
from engine.contract.errors import cli_entry
from engine.trainer import train

__all__ = ["main", "train"]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.train",
        description="Train a GPT from a TOML config; any key can be overridden as "
        "--section.key=value (e.g. --train.max_steps=500).",
    )
    parser.add_argument("config", help="a TOML config, e.g. presets/tiny.toml")
    parser.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="PATH",
        help="continue the run from its latest checkpoint, or from PATH "
        "(a checkpoint file or run directory)",
    )  # fmt: skip
    parser.add_argument(
        "--report-to", metavar="ADDRESS",
        help="the studio's socket (unix:PATH or tcp:127.0.0.1:PORT): send it every event and "
        "obey its pause, resume, stop, save and sample commands; without it the run is headless",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(args.config, overrides)
    state = train(cfg, resume=args.resume, report_to=args.report_to)
    return 0 if state.step > 0 or cfg.train.max_steps == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
