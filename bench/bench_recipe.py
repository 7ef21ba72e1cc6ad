"""The modern recipe against the classic one: time to the same held-out loss, side by side.

    python bench/bench_recipe.py shakespeare ../shared/data/tinyshakespeare.txt [--rounds 1]
    python bench/bench_recipe.py prose [--seconds 0]

`shakespeare`: nanoGPT's CPU Shakespeare-char run (bench/shakespeare_char.toml: 4 layers, 4 heads,
128 wide, context 64, batch 12, AdamW 1e-3 cosine to 1e-4 over 2000 steps) is the classic recipe;
the same shape with `RECIPE`'s switches is the new one. Both are scored by one rule on one text:
the last 10% of the file (nanoGPT's split), cut into consecutive 64-token windows. Printed: the
classic recipe's final val loss, then for each recipe the steps and training seconds (evaluation
not counted) it took to first reach that loss, and its ms/step.

`prose`: the Tiny preset (the recipe) against Tiny with `CLASSIC`'s overrides, on builtin:prose,
scored in bits per byte on the last 10% of the text. The classic run takes its preset's steps;
the recipe gets as many steps as fit in the same training seconds (from a short timing of its
steps), so the comparison is at equal wall time. Prints a sample from each at the end.

Both modes train through the engine's own model, optimizer groups and schedule (engine.model,
engine.optim), in a plain loop so timings hold only the step. `--variant NAME='--k=v ...'` adds
runs for ablations. With `--rounds 2` the recipes run again in reverse order, so load from other
work on the machine falls on both alike; ms/step is the median over rounds.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import optim  # noqa: E402
from engine.contract import config, sizing  # noqa: E402
from engine.data import builtin  # noqa: E402
from engine.model import GPT  # noqa: E402

# The switches that make the recipe out of bench/shakespeare_char.toml's classic run.
RECIPE = (
    "--model.pos=rope --model.norm=rmsnorm --model.norm_affine=false --model.mlp=swiglu "
    "--model.qk_norm=true --model.zero_init=true --model.tie_embeddings=false "
    "--train.optimizer=muon --train.lr_schedule=wsd --train.decay_fraction=0.4 "
    "--train.max_steps=1000 --train.warmup_steps=20 --train.min_lr=0 --train.beta1=0.8 "
    "--train.matrix_lr=0.04 --train.embedding_lr=0.1 --train.head_lr=0.008"
)
# The switches that turn a recipe preset back into GPT-2's classic recipe.
CLASSIC = (
    "--model.pos=learned --model.norm=layernorm --model.norm_affine=true --model.mlp=gelu "
    "--model.qk_norm=false --model.zero_init=false --model.tie_embeddings=true "
    "--model.logit_softcap=0 --train.optimizer=adamw --train.lr_schedule=cosine "
    "--train.lr=1e-3 --train.min_lr=1e-4 --train.warmup_steps=100 --train.beta1=0.9"
)


@dataclass
class Result:
    name: str
    steps: int = 0
    seconds: float = 0.0  # training only
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds, val)
    sample: str = ""

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / self.steps

    def reached(self, target: float) -> tuple[int, float] | None:
        """(step, seconds) of the first evaluation at or below `target`."""
        for step, seconds, val in self.curve:
            if val <= target + 1e-9:
                return step, seconds
        return None


class Corpus:
    """A text as character ids, split like nanoGPT: the first 90% to train, the last 10% held out."""

    def __init__(self, text: str) -> None:
        chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.itos = chars
        ids = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        cut = int(0.9 * len(ids))
        self.train, self.val = ids[:cut], ids[cut:]
        # bytes per token of the held-out text, to turn nats per token into bits per byte
        self.bytes_per_token = len(text[cut:].encode("utf-8")) / len(self.val)


def val_loss(model: GPT, corpus: Corpus, block: int) -> float:
    """Mean cross-entropy over consecutive `block`-token windows of the held-out text."""
    n = (len(corpus.val) - 1) // block
    x = corpus.val[: n * block].view(n, block)
    y = corpus.val[1 : n * block + 1].view(n, block)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 256):
            _, loss = model(x[i : i + 256], y[i : i + 256])
            total += loss.item() * x[i : i + 256].numel()
    model.train()
    return total / (n * block)


def train(
    name: str,
    cfg: config.Config,
    corpus: Corpus,
    eval_every: int,
    prompt: str = "",
    late: float = 0.4,
) -> Result:
    """Train `cfg` for its max_steps from its seed; evaluate every `eval_every` steps after
    `late` of the run, every fifth of those before."""
    t, block = cfg.train, cfg.model.block_size
    torch.manual_seed(t.seed)
    model = GPT(sizing.resolve_model(cfg, len(corpus.itos)))
    opt = optim.build(model, t)
    batches = torch.Generator().manual_seed(t.seed)
    out = Result(name)
    for step in range(t.max_steps):
        start = time.perf_counter()
        optim.set_step(opt, step, t)
        ix = torch.randint(len(corpus.train) - block - 1, (t.batch_size,), generator=batches)
        x = torch.stack([corpus.train[i : i + block] for i in ix.tolist()])
        y = torch.stack([corpus.train[i + 1 : i + 1 + block] for i in ix.tolist()])
        _, loss = model(x, y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the step is done when its loss is known
        out.seconds += time.perf_counter() - start
        out.steps = step + 1
        # evaluating costs as much as training here: often only late in the run, where the
        # target can be crossed, and rarely before
        every = eval_every if out.steps >= late * t.max_steps else 5 * eval_every
        if out.steps % every == 0 or out.steps == t.max_steps:
            out.curve.append((out.steps, out.seconds, val_loss(model, corpus, block)))
    if prompt:
        out.sample = sample(model, corpus, prompt, block)
    return out


def sample(model: GPT, corpus: Corpus, prompt: str, block: int, n: int = 300) -> str:
    torch.manual_seed(0)
    ids = torch.tensor([[corpus.stoi[c] for c in prompt if c in corpus.stoi]])
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(ids[:, -block:], last_only=True)
            probs = torch.softmax(logits[0, -1] / 0.8, dim=-1)[: len(corpus.itos)]
            ids = torch.cat([ids, torch.multinomial(probs, 1)[None]], dim=1)
    return "".join(corpus.itos[i] for i in ids[0].tolist())


def run_all(plans: list[tuple[str, config.Config]], corpus: Corpus, args) -> dict[str, Result]:
    """Every plan once per round, the order reversed each round; the last round's curves kept."""
    results: dict[str, list[Result]] = {name: [] for name, _ in plans}
    for round_ in range(args.rounds):
        order = plans if round_ % 2 == 0 else plans[::-1]
        for name, cfg in order:
            # the classic run only sets the target: its final loss
            late = 1.0 if name == "classic" else 0.4
            r = train(name, cfg, corpus, args.eval_every, args.prompt, late)
            print(f"  round {round_ + 1} {name}: {r.steps} steps, {r.seconds:.1f} s, "
                  f"{r.ms_per_step:.1f} ms/step, final val {r.curve[-1][2]:.4f}", flush=True)  # fmt: skip
            results[name].append(r)
    merged = {}
    for name, runs in results.items():
        r = runs[-1]
        r.seconds = statistics.median(x.ms_per_step for x in runs) * r.steps / 1000
        scale = r.seconds / runs[-1].curve[-1][1]
        r.curve = [(s, sec * scale, v) for s, sec, v in r.curve]
        merged[name] = r
    return merged


def report(results: dict[str, Result], unit: str, to_unit) -> None:
    classic = results["classic"]
    target = classic.curve[-1][2]
    print(f"\nclassic final val {unit}: {to_unit(target):.4f} after {classic.steps} steps")
    print(f"{'recipe':<14}{'final':>8}{'steps to it':>13}{'s to it':>9}{'x classic':>11}"
          f"{'ms/step':>9}")  # fmt: skip
    for name, r in results.items():
        hit = r.reached(target)
        steps, secs = (str(hit[0]), f"{hit[1]:.1f}") if hit else ("never", "-")
        ratio = f"{hit[1] / classic.seconds:.2f}" if hit else "-"
        print(f"{name:<14}{to_unit(r.curve[-1][2]):>8.4f}{steps:>13}{secs:>9}{ratio:>11}"
              f"{r.ms_per_step:>9.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["shakespeare", "prose"])
    parser.add_argument("data", nargs="?", default="", help="shakespeare: the text file")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--variant", action="append", default=[], help="NAME='--k=v ...'")
    parser.add_argument("--no-recipe", action="store_true", help="only classic and variants")
    parser.add_argument("--steps", type=int, default=0, help="classic's steps (0: its config's)")
    parser.add_argument("--recipe-steps", type=int, default=0, help="shakespeare: the recipe's")
    parser.add_argument("--prompt", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.mode == "shakespeare":
        if not args.data:
            parser.error("shakespeare needs the text file, e.g. ../shared/data/tinyshakespeare.txt")
        corpus = Corpus(Path(args.data).read_text(encoding="utf-8"))
        base = ROOT / "bench" / "shakespeare_char.toml"
        # a shorter budget keeps nanoGPT's warmup share (100 of 2000 steps)
        short = [f"--train.max_steps={args.steps}",
                 f"--train.warmup_steps={max(1, args.steps // 20)}"] if args.steps else []  # fmt: skip
        mine = [f"--train.max_steps={args.recipe_steps}"] if args.recipe_steps else []
        plans = [("classic", config.load(base, short))]
        if not args.no_recipe:
            plans.append(("recipe", config.load(base, shlex.split(RECIPE) + mine)))
        for v in args.variant:
            name, _, overrides = v.partition("=")
            plans.append((name, config.load(base, shlex.split(RECIPE + " " + overrides) + mine)))
        report(run_all(plans, corpus, args), "loss", lambda v: v)
        return

    corpus = Corpus(builtin.prose().decode("utf-8"))
    args.prompt = args.prompt or "The "
    tiny = ROOT / "presets" / "tiny.toml"
    # a shorter budget keeps the preset's warmup share (100 of 2500 steps)
    steps = [f"--train.max_steps={args.steps}",
             f"--train.warmup_steps={max(1, args.steps // 25)}"] if args.steps else []  # fmt: skip
    classic_cfg = config.load(tiny, shlex.split(CLASSIC) + steps)
    recipe_cfg = config.load(tiny)
    # equal wall time: the recipe gets the steps that fit in the classic run's time
    probe = [("classic", _short(classic_cfg)), ("recipe", _short(recipe_cfg))]
    timing = {name: train(name, cfg, corpus, 10**9).ms_per_step for name, cfg in probe}
    recipe_steps = int(classic_cfg.train.max_steps * timing["classic"] / timing["recipe"])
    recipe_cfg.train.max_steps = recipe_steps
    print(f"probe: classic {timing['classic']:.1f} ms/step, recipe {timing['recipe']:.1f} "
          f"ms/step -> recipe gets {recipe_steps} steps")  # fmt: skip
    args.eval_every = 10**9  # equal wall time needs only the final figures
    results = run_all([("classic", classic_cfg), ("recipe", recipe_cfg)], corpus, args)
    bpb = lambda v: v / math.log(2) * corpus.bytes_per_token  # noqa: E731
    report(results, "bits/byte", bpb)
    for name, r in results.items():
        print(f"\nsample, {name} ({r.seconds:.0f} s of training):\n{r.sample}")


def _short(cfg: config.Config, steps: int = 40) -> config.Config:
    import copy

    short = copy.deepcopy(cfg)
    short.train.max_steps = steps
    short.train.warmup_steps = min(short.train.warmup_steps, steps)
    return short


if __name__ == "__main__":
    main()
