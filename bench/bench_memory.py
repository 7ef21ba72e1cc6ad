"""Peak memory of one training step of the Mini shape with cl100k's vocabulary, with the output
layer's loss computed whole and in chunks (engine.loss).

    python bench/bench_memory.py [--batch-size 2] [--layers 12]

Mini is 12 layers of 768 with a 100,352-token vocabulary and 32 x 1024-token micro-batches; its
whole logits alone are 13 GB in fp32, more than this benchmark's CPU machines can hold beside
their gradients. So it runs Mini's width, depth, vocabulary and context at a smaller micro-batch
(--batch-size sequences of 1024 tokens) and says so. Each variant runs in a fresh process (peak
resident memory only grows), one forward, backward and AdamW step in fp32; beside each measured
peak is engine.config's estimate for the same step, so the estimate is checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 100352  # cl100k_base, padded to a multiple of 128


def one_step(batch_size: int, layers: int, chunked: bool) -> dict:
    import torch

    from engine.contract import config, sizing
    from engine.model import GPT

    if not chunked:  # one chunk holds any logits: the loss as computed before engine.loss
        sizing.LOSS_CHUNK_ELEMENTS = 1 << 62
    cfg = config.load(ROOT / "presets/mini.toml", [f"--model.n_layer={layers}",
                      f"--train.batch_size={batch_size}", "--train.dtype=float32"])  # fmt: skip
    cfg.model.vocab_size = VOCAB
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = model.optimizer(lr=1e-4, weight_decay=0.1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x = torch.randint(0, VOCAB, (batch_size, cfg.model.block_size))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = sizing.memory_estimate(cfg)
    return {"peak": peak, "before_step": before, "loss": loss.item(),
            "estimate": estimate["total"], "activations": estimate["activations"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--child", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.batch_size, args.layers, args.child == "chunked")))
        return
    tokens = args.batch_size * 1024
    print(f"Mini shape ({args.layers} layers x 768, vocabulary {VOCAB:,}), micro-batch "
          f"{args.batch_size} x 1024 = {tokens:,} tokens (Mini's own is 32 x 1024), fp32, CPU; "
          f"whole logits {tokens * VOCAB * 4 / 2**30:.1f} GiB")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = {}
    for kind in ("whole", "chunked"):
        cmd = [sys.executable, __file__, f"--batch-size={args.batch_size}",
               f"--layers={args.layers}", f"--child={kind}"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        r = results[kind] = json.loads(out.splitlines()[-1])
        print(f"  loss {kind:8s}: peak RSS {r['peak'] / 2**30:5.2f} GiB (model and optimizer "
              f"built: {r['before_step'] / 2**30:5.2f} GiB; step adds "
              f"{(r['peak'] - r['before_step']) / 2**30:5.2f}); engine.config estimates "
              f"{r['estimate'] / 2**30:5.2f} GiB, loss {r['loss']:.4f}")  # fmt: skip
    w, c = results["whole"], results["chunked"]
    print(
        f"chunked / whole peak: {c['peak'] / w['peak']:.2f} "
        f"(step's own growth {(c['peak'] - c['before_step']) / (w['peak'] - w['before_step']):.2f})"
    )


if __name__ == "__main__":
    main()
