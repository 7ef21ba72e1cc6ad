"""`python -m engine.export SOURCE OUT_DIR`: a checkpoint as a Hugging Face model folder."""

from __future__ import annotations

import argparse

from engine.contract.errors import cli_entry
from engine.export import FILES, FORMATS, export, export_adapter


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
    parser.add_argument(
        "--adapter", action="store_true",
        help="a LoRA run: write only its adapters, in PEFT's layout (adapter_config.json, "
        "adapter_model.safetensors); without it the adapters are merged into the model",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.adapter:
        export_adapter(args.source, args.out_dir, force=args.force)
        print(f"exported LoRA adapters to {args.out_dir} (adapter_config.json, "
              "adapter_model.safetensors)")  # fmt: skip
        return 0
    fmt = export(args.source, args.out_dir, force=args.force)
    print(f"exported {FORMATS[fmt][0]} model to {args.out_dir} ({', '.join(FILES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
