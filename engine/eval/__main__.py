"""`python -m engine.eval CHECKPOINT`: loss, perplexity and bits per byte on a corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from engine.contract.errors import UsageError, cli_entry
from engine.eval import run


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.eval",
        description="Validation loss, perplexity and bits per byte of a checkpoint on a corpus.",
    )
    parser.add_argument("checkpoint", help="a checkpoint file, or a run directory (its best)")
    parser.add_argument("--data", default="", help="a data.source (default: the one it trained on)")
    parser.add_argument("--split", default="val", help="val (default), train, or all")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=0, help="stop after this many (0: all)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.batch_size <= 0 or args.max_tokens < 0:
        raise UsageError("--batch-size must be above 0 and --max-tokens 0 or more")
    report = run(
        args.checkpoint, args.data, args.split, batch_size=args.batch_size,
        max_tokens=args.max_tokens, device_name=args.device,
    )  # fmt: skip
    if args.json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        print(
            f"{report.source} ({report.split}): loss {report.loss:.4f}, ppl {report.ppl:.2f}, "
            f"{report.bits_per_byte:.4f} bits per byte over {report.tokens:,} tokens "
            f"({report.bytes:,} bytes) in {report.seconds:.1f}s"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
