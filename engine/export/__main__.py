"""`python -m engine.export SOURCE OUT_DIR`: a checkpoint as a Hugging Face model folder."""

from __future__ import annotations

import argparse

from engine.contract.errors import cli_entry
from engine.export import FILES, FORMATS, export


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.export",
        description="Write a checkpoint as a Hugging Face model folder (GPT-2 or Llama format).",
    )
    parser.add_argument("source", help="a run directory, a checkpoint file, or hf:PATH")
    parser.add_argument("out_dir", help="the folder to write (new or empty)")
    parser.add_argument(
        "--force", action="store_true", help="write into a folder that already holds files"
    )
    args = parser.parse_args(argv)
    fmt = export(args.source, args.out_dir, force=args.force)
    print(f"exported {FORMATS[fmt][0]} model to {args.out_dir} ({', '.join(FILES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
