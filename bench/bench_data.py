"""Data pipeline throughput, each figure a ratio against a plain reference measured in the run.

    python bench/bench_data.py [--data ../shared/data/tinyshakespeare.txt] [--copies 16] [--rounds 3]

1. prepare vs the tokenizer alone: `engine.data.prepare` (read files, split, tokenize in worker
   processes, write shards and manifest) against tiktoken's `encode_ordinary_batch` on the same
   text already in memory, with as many threads as prepare has workers. cl100k_base.
2. shard loader vs the model: batches of the Tiny preset's shape (16 x 128) from `ShardLoader`
   against one Tiny training step (forward, backward, AdamW) on this CPU.

The corpus is the --data file copied --copies times under different names, so it spans several
files and work units like a real corpus.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import data  # noqa: E402
from engine.contract import config, sizing  # noqa: E402
from engine.data.loaders import ShardLoader  # noqa: E402
from engine.model import GPT  # noqa: E402
from engine.tokenizer import TiktokenTokenizer  # noqa: E402


def corpus(src: Path, copies: int, folder: Path) -> Path:
    text = src.read_text(encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        (folder / f"part{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


def tiktoken_alone(folder: Path, threads: int) -> float:
    """bytes/s of encode_ordinary_batch on 1 MiB pieces of the files, read beforehand."""
    pieces = []
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        pieces += [text[i : i + (1 << 20)] for i in range(0, len(text), 1 << 20)]
    total = sum(len(p.encode("utf-8")) for p in pieces)
    enc = TiktokenTokenizer("cl100k_base")._enc
    start = time.perf_counter()
    enc.encode_ordinary_batch(pieces, num_threads=threads)
    return total / (time.perf_counter() - start)


def prepare_pipeline(folder: Path, workers: int, cache: Path) -> float:
    """bytes/s of a cold prepare, from files on disk to shards and manifest."""
    cfg = config.Config(name="bench")
    cfg.tokenizer = config.TokenizerConfig(kind="tiktoken", name="cl100k_base")
    cfg.data = config.DataConfig(
        source=str(folder), cache_dir=str(cache), num_workers=workers, val_fraction=0.01
    )
    start = time.perf_counter()
    prepared = data.prepare(cfg)
    elapsed = time.perf_counter() - start
    return prepared.manifest["bytes"] / elapsed


def loader_vs_model(folder: Path, cache: Path, batches: int = 200, steps: int = 20) -> tuple:
    """(batches/s of the loader, steps/s of Tiny training) on Tiny's batch shape."""
    cfg = config.load_preset("tiny")
    cfg.data = config.DataConfig(source=str(folder), cache_dir=str(cache), val_fraction=0.01)
    prepared = data.prepare(cfg)
    t, block = cfg.train, cfg.model.block_size
    loader = ShardLoader(prepared.dataset, "train", batch_size=t.batch_size, block_size=block)
    start = time.perf_counter()
    for _ in range(batches):
        loader.next()
    loader_rate = batches / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = GPT(sizing.resolve_model(cfg, prepared.tokenizer.vocab_size))
    opt = model.optimizer(lr=t.lr, weight_decay=t.weight_decay)

    def step() -> None:
        x, y = loader.next()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):  # the first steps warm up the allocator and kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return loader_rate, steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = corpus(Path(args.data), args.copies, Path(tmp) / "corpus")
        size = sum(p.stat().st_size for p in folder.glob("*.txt"))
        print(
            f"corpus: {args.copies} files, {size / 2**20:.1f} MiB; {args.workers} workers/threads"
        )
        alone, piped = [], []
        for r in range(args.rounds):
            alone.append(tiktoken_alone(folder, args.workers))
            piped.append(prepare_pipeline(folder, args.workers, Path(tmp) / f"cache{r}"))
            print(f"round {r + 1}: tiktoken alone {alone[-1] / 2**20:.2f} MiB/s, "
                  f"prepare {piped[-1] / 2**20:.2f} MiB/s")  # fmt: skip
        a, b = statistics.median(alone), statistics.median(piped)
        print(
            f"prepare / tiktoken alone: {b / a:.3f} (median {b / 2**20:.2f} vs {a / 2**20:.2f} MiB/s)"
        )
        loader_rate, step_rate = loader_vs_model(folder, Path(tmp) / "cache-tiny")
        print(f"shard loader {loader_rate:,.0f} batches/s vs Tiny training {step_rate:.1f} steps/s: "
              f"{loader_rate / step_rate:,.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
