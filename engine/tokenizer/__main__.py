"""`python -m engine.tokenizer train SOURCE`: train a BPE or char tokenizer on your own text."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.contract.errors import UsageError, cli_entry
from engine.data import sources  # the same readers as training: files, folders, parquet
from engine.tokenizer import (
    DEFAULT_BPE_VOCAB,
    BPETokenizer,
    CharTokenizer,
    check_vocab_size,
)


def _train(args: argparse.Namespace) -> int:
    if args.kind == "char" and args.vocab_size is not None:
        raise UsageError("--vocab-size applies to --kind bpe; a char vocabulary is SOURCE's set")
    vocab_size = DEFAULT_BPE_VOCAB if args.vocab_size is None else args.vocab_size
    if args.kind == "bpe":
        check_vocab_size(vocab_size, "--vocab-size")
    out = Path(args.out or ("tokenizer.json" if args.kind == "bpe" else "char_tokenizer.json"))
    if out.exists() and not args.force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it or --out elsewhere")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    names = sources.Names(source="SOURCE", include="--include", column="--text-column")
    source = sources.resolve(
        args.source, text_column=args.text_column, include=args.include, names=names
    )
    texts = sources.texts(source)
    tok: BPETokenizer | CharTokenizer
    if args.kind == "bpe":
        tok = BPETokenizer.train(texts, vocab_size)
    else:
        tok = CharTokenizer.train(texts)
    tok.save(out)
    print(
        f"trained {args.kind} tokenizer: vocab size {tok.vocab_size:,} from "
        f"{source.total_bytes:,} bytes in {len(source.files)} files -> {out}"
    )
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.tokenizer", description="Train a tokenizer on your own text."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a BPE or char tokenizer on text files")
    train.add_argument(
        "source", help="builtin:prose, builtin:code, a text/.jsonl/parquet file, a folder or a glob"
    )
    train.add_argument("--kind", choices=("bpe", "char"), default="bpe")
    train.add_argument(
        "--vocab-size", type=int, help=f"ids in the BPE vocabulary (default {DEFAULT_BPE_VOCAB})"
    )
    train.add_argument(
        "--out", help="output file (default tokenizer.json, or char_tokenizer.json for char)"
    )
    train.add_argument("--include", default="*.txt", help="glob for files in a folder SOURCE")
    train.add_argument("--text-column", default="text", help="jsonl field / parquet column")
    train.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    args = parser.parse_args(argv)
    return _train(args)


if __name__ == "__main__":
    raise SystemExit(main())
