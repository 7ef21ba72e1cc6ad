"""Training throughput of engine.train against nanoGPT's own train.py, side by side in one run.

    python bench/bench_train.py --nanogpt PATH --data shared/data/tinyshakespeare.txt
        [--steps 300] [--rounds 3] [--variant NAME=--key=value,...] [--tiny]

PATH is a checkout of karpathy/nanoGPT (or a bare git directory of it, which is exported to a
temporary folder); nothing of nanoGPT lives in this repository. Its README's CPU command trains
the Shakespeare-char shape (4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW, no
dropout); engine.train trains the same shape, batch and optimizer from bench/shakespeare_char.toml
on the same text, with nanoGPT's exact GELU (SAME_MODEL). Both run as the commands a user types,
in rounds that alternate which goes first, so load from anything else on the machine falls on
both alike.

engine.train runs as a user's command would, with train.dtype and train.matmul_precision left at
auto: on a CPU with bf16 units it may pick fp32 with bf16 matrix products (engine.precision; the
line it printed is shown). nanoGPT's CPU command computes in full fp32, so a second engine row,
"full fp32", times engine.train held to exactly that (dtype float32, matmul precision highest).

Each side's speed is its median time per optimizer step, steps after the first WARMUP: medians
leave out the steps that evaluate or save, on both sides. nanoGPT prints every step's time;
engine.train's metrics.jsonl gives the mean step time of each 10-step window. Reported:
tokens/s of each (median over rounds) and the ratio. Extra engine configurations can be timed in
the same rounds with --variant (e.g. --variant eager=--train.compile=false). --tiny also times
the Tiny preset's first steps (engine only: it has no nanoGPT counterpart).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's engine

from engine.contract.config import load as load_config  # noqa: E402

WARMUP = 20  # steps left out of both timings: the allocator, kernels and compilation warm up
BATCH, CONTEXT = 12, 64
README_CPU_COMMAND = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
# nanoGPT's MLP is the exact (erf) GELU, not GPT-2's tanh form: the same model, op for op
SAME_MODEL = ["--model.mlp=gelu_exact"]
# what happens outside the timed steps, cut to nanoGPT's measure: 20 evaluation batches
UNTIMED = ["--train.eval_steps=20", "--train.sample_tokens=50"]
# nanoGPT's precision on a CPU, for the like-for-like row
FULL_FP32 = ["--train.dtype=float32", "--train.matmul_precision=highest"]
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def nanogpt_checkout(path: Path, into: Path) -> Path:
    """A working copy of nanoGPT with the Shakespeare-char data prepared from `data`."""
    if (path / "train.py").is_file():
        shutil.copytree(path, into, ignore=shutil.ignore_patterns(".git", "out*"))
    else:  # a bare repository, as the fetch tool leaves it
        into.mkdir(parents=True)
        archive = subprocess.run(["git", f"--git-dir={path}", "archive", "HEAD"],
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if not (into / "train.py").is_file():
        raise SystemExit(f"--nanogpt {path}: no nanoGPT checkout (train.py) there")
    return into


def prepare_nanogpt(repo: Path, data: Path) -> None:
    folder = repo / "data/shakespeare_char"
    shutil.copy(data, folder / "input.txt")  # prepare.py downloads only when this is missing
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, check=True, capture_output=True)


def run_nanogpt(repo: Path, steps: int, out: Path) -> float:
    """Median ms per step of nanoGPT's README CPU command, cut to `steps`."""
    cmd = [sys.executable, "train.py", *README_CPU_COMMAND, f"--max_iters={steps}",
           f"--lr_decay_iters={steps}", f"--out_dir={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"nanoGPT failed:\n{done.stderr[-2000:]}")
    times = [
        float(m.group(2))
        for line in done.stdout.splitlines()
        if (m := ITER_LINE.match(line)) and int(m.group(1)) >= WARMUP
    ]
    return statistics.median(times)


def run_engine(
    config: Path, overrides: list[str], steps: int, out: Path, same_model: bool = True
) -> tuple[float, str]:
    """Median ms per step of `python -m engine.train`, from its metrics.jsonl; and the log line
    that says which precision it chose."""
    cmd = [sys.executable, "-m", "engine.train", str(config), f"--out_dir={out}",
           "--name=bench", f"--train.max_steps={steps}", "--log.interval=10",
           f"--train.warmup_steps={min(100, steps)}", *UNTIMED,
           *(SAME_MODEL if same_model else []), *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"engine.train failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "bench/metrics.jsonl").open()]
    steps = [r for r in records if r.get("type") == "step"]
    times = [r["step_ms"] for r in steps if r["step"] > WARMUP] or [steps[-1]["step_ms"]]
    said = next((r["message"] for r in records if "precision" in r.get("message", "")), "")
    return statistics.median(times), said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a karpathy/nanoGPT checkout")
    parser.add_argument("--data", type=Path, required=True, help="tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="another engine configuration, comma-separated overrides")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="also time the Tiny preset")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file")
    config = shape = ROOT / "bench/shakespeare_char.toml"
    data = [f"--data.source={args.data.resolve()}"]
    engines = {"engine.train": data, "full fp32": data + FULL_FP32}
    for v in args.variant:
        name, _, overrides = v.partition("=")
        engines[name] = data + [o for o in overrides.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        repo = nanogpt_checkout(args.nanogpt.resolve(), tmp / "nanoGPT")
        prepare_nanogpt(repo, args.data)
        said: list[str] = []

        def engine(out: Path, overrides: list[str], config: Path = config) -> float:
            ms, line = run_engine(config, overrides, args.steps, out, same_model=config == shape)
            said.append(line)
            return ms

        runs = {name: (lambda o, ov=ov: engine(o, ov)) for name, ov in engines.items()}
        runs["nanoGPT"] = lambda o: run_nanogpt(repo, args.steps, o)
        tiny_tokens = 0
        if args.tiny:
            tiny = ROOT / "presets/tiny.toml"
            preset = load_config(tiny)
            tiny_tokens = (
                preset.train.batch_size * preset.train.grad_accum * preset.model.block_size
            )
            runs["tiny preset"] = lambda o: engine(o, [], tiny)
        ms: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # each goes first in turn
            for name in order:
                ms[name].append(runs[name](tmp / f"{name}-{r}".replace(" ", "_")))
            print(f"round {r + 1}: " + ", ".join(f"{n} {ms[n][-1]:.1f} ms" for n in names),
                  flush=True)  # fmt: skip
    chosen = [line for line in said if line]  # from the runs left at auto
    print(chosen[0] if chosen else "engine.train did not say which precision it chose")
    ref = statistics.median(ms["nanoGPT"])
    print(f"\nmedian over {args.rounds} rounds, {args.steps} steps each (first {WARMUP} left out):")
    for name in names:
        m = statistics.median(ms[name])
        tokens = BATCH * CONTEXT if name != "tiny preset" else tiny_tokens
        rate = f"{tokens / m * 1e3:9,.0f} tok/s"
        ratio = f"  {ref / m:.2f}x nanoGPT" if name != "tiny preset" else ""
        print(f"  {name:16s} {m:7.1f} ms/step {rate}{ratio}")


if __name__ == "__main__":
    main()
