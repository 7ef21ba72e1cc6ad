"""Trainer throughput against a plain eager PyTorch loop over the same model and batches.

    python bench/bench_train.py [--data ../shared/data/tinyshakespeare.txt] [--steps 300] [--rounds 3]

Both sides train the Shakespeare setup (bench/shakespeare_char.toml) from the same seed on the
same ShardLoader batches, interleaved round by round so machine noise hits both alike. The plain
loop is what nanoGPT's train.py does per step; engine.train adds its metrics, console lines,
checkpoints and progress. Reported: tokens/s of each (median over rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import data, metrics  # noqa: E402
from engine.contract import config, sizing  # noqa: E402
from engine.contract import events as p  # noqa: E402
from engine.model import GPT  # noqa: E402
from engine.schedule import lr_at  # noqa: E402
from engine.train import train  # noqa: E402

WARMUP = 20  # steps left out of both timings: the allocator and kernels warm up


def plain_loop(cfg: config.Config, prepared: data.Prepared, steps: int) -> float:
    """tokens/s of the reference: batch, forward, backward, clip, step. Nothing else."""
    torch.manual_seed(cfg.train.seed)
    model = GPT(sizing.resolve_model(cfg, prepared.tokenizer.vocab_size))
    t = cfg.train
    opt = model.optimizer(lr=t.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2))
    loader = data.ShardLoader(prepared.dataset, "train", batch_size=t.batch_size,
                              block_size=cfg.model.block_size, seed=t.seed)  # fmt: skip
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, t)
        x, y = loader.next()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    elapsed = time.perf_counter() - start
    loader.close()
    return (steps - WARMUP) * t.batch_size * cfg.model.block_size / elapsed


class Clock:
    """A console sink that notes when each logged step ended, to time steady-state steps."""

    def __init__(self) -> None:
        self.console = metrics.PlainConsole(stream=io.StringIO())
        self.steps: list[tuple[int, float]] = []

    def write(self, event: p.Event) -> None:
        self.console.write(event)
        if isinstance(event, p.Step):
            self.steps.append((event.step, time.perf_counter()))

    def close(self) -> None:
        pass


def engine_loop(cfg: config.Config, steps: int, out: Path) -> float:
    """tokens/s of engine.train after WARMUP steps, every extra included: a log line and a
    metrics.jsonl record every 10 steps, periodic checkpoints, the progress console."""
    cfg = copy.deepcopy(cfg)
    cfg.out_dir, cfg.train.max_steps = str(out), steps
    cfg.train.eval_interval = cfg.train.sample_interval = steps
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, steps)
    cfg.checkpoint.interval = max(1, steps // 3)
    cfg.log.interval = 10
    clock = Clock()
    train(cfg, console=clock)
    (s0, t0), (s1, t1) = next(s for s in clock.steps if s[0] >= WARMUP), clock.steps[-1]
    return (s1 - s0) * cfg.train.batch_size * cfg.model.block_size / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = config.load(ROOT / "bench/shakespeare_char.toml", [f"--data.source={args.data}"])
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        cfg.data.cache_dir = str(Path(tmp) / "cache")
        prepared = data.prepare(cfg)
        plain, eng = [], []
        for r in range(args.rounds):
            # alternate which goes first, so neither always runs on a warmer machine
            if r % 2 == 0:
                plain.append(plain_loop(cfg, prepared, args.steps))
            eng.append(engine_loop(cfg, args.steps, Path(tmp) / f"runs{r}"))
            if r % 2 == 1:
                plain.append(plain_loop(cfg, prepared, args.steps))
            print(f"round {r + 1}: plain {plain[-1]:,.0f} tok/s, engine.train {eng[-1]:,.0f} tok/s")
    ratio = statistics.median(eng) / statistics.median(plain)
    print(f"median: plain {statistics.median(plain):,.0f} tok/s, "
          f"engine.train {statistics.median(eng):,.0f} tok/s, ratio {ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
