"""Generation speed of a GPT-2-124M-shaped model on this machine's CPU.

    python bench/bench_generate.py [--new-tokens 128] [--rounds 5] [--threads 2]

Prints three figures, all from one run:
  (a) a decode step with the KV cache against recomputing the whole context, at 256 and 1024
      tokens of context;
  (b) our greedy decoding against transformers' `generate()` on the same weights exported with
      engine.export, batch 1 and batch 8. Ours is what `python -m engine.generate` runs on a
      CPU: one row with its matrices in decoding layout, several in nn.Linear's; the other
      layout is shown beside it. The rounds interleave the three, and each reports its best
      round: on a shared machine the best is the round least disturbed by other work;
  (c) batch-1 decoding against the memory-bandwidth bound: every weight is read once per token,
      so tokens/s can be at most (copy bandwidth) / (weight bytes).
Random weights: speed does not depend on what the weights say.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's engine

import torch

from engine.contract.config import ModelConfig
from engine.contract.sampling import Sampling
from engine.export import write_model
from engine.generate import decode, decoding_layout
from engine.model import GPT

GPT2_124M = ModelConfig(
    n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, bias=True
)


def best_of(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls: the least disturbed by anything else."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


@torch.inference_mode()
def cache_vs_recompute(model: GPT, context: int, steps: int = 8) -> tuple[float, float]:
    """Seconds per new token at `context` tokens: one cached step, and one full forward."""
    x = torch.randint(0, GPT2_124M.vocab_size, (1, context))

    def cached() -> None:
        cache = model.make_cache(1, max_len=context)
        model(x[:, : context - steps], cache=cache, last_only=True)
        began = time.perf_counter()
        for t in range(context - steps, context):
            model(x[:, t : t + 1], cache=cache, last_only=True)
        timings.append((time.perf_counter() - began) / steps)

    timings: list[float] = []
    for _ in range(3):
        cached()
    recompute = best_of(lambda: model(x, last_only=True), 3)
    return min(timings), recompute


def ours(model: GPT, prompt: torch.Tensor, new_tokens: int) -> list[list[int]]:
    rows = [[] for _ in range(prompt.size(0))]
    for token in decode(model, prompt.tolist(), Sampling(max_tokens=new_tokens, temperature=0)):
        for row, t in zip(rows, token.tolist(), strict=True):
            row.append(t)
    return rows


@torch.inference_mode()
def theirs(hf_model, prompt: torch.Tensor, new_tokens: int) -> list[list[int]]:
    out = hf_model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_tokens=new_tokens,
        min_new_tokens=new_tokens,  # no early end: the same work as ours
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, prompt.size(1) :].tolist()


def copy_bandwidth(threads: int, gib: float = 1.0) -> float:
    """Bytes per second moved by a large tensor copy (each byte read once, written once)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    seconds = best_of(lambda: dst.copy_(src), 5)
    torch.set_num_threads(before)
    return 2 * src.numel() * 4 / seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    # first, before the models fill memory and while the machine is likeliest to be quiet
    bandwidth, one_thread = copy_bandwidth(args.threads), copy_bandwidth(1)
    trained = GPT(GPT2_124M).eval()
    layouts = {
        "decoding layout": decoding_layout(copy.deepcopy(trained)),
        "nn.Linear layout": trained,
    }
    n_params = trained.num_params()
    print(f"model: GPT-2 124M shape, {n_params / 1e6:.1f}M parameters, fp32\n")

    print("(a) KV cache against recomputing the context, per new token")
    for context in (256, 1024):
        cached, recompute = cache_vs_recompute(layouts["decoding layout"], context)
        print(
            f"  context {context:4d}: cached {cached * 1e3:7.1f} ms, recompute "
            f"{recompute * 1e3:7.1f} ms, ratio {recompute / cached:5.1f}x"
        )

    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), GPT2_124M, trained.state_dict(), GPT2_124M.vocab_size)
        hf_model = AutoModelForCausalLM.from_pretrained(tmp).eval()
    print(
        f"\n(b) greedy decoding, {args.prompt_tokens}-token prompts, {args.new_tokens} new "
        f"tokens per row; tokens/s over all rows, best of {args.rounds} interleaved rounds"
    )
    ours_rate: dict[int, float] = {}
    for batch in (1, 8):
        mine = "decoding layout" if batch == 1 else "nn.Linear layout"
        other = next(name for name in layouts if name != mine)
        contenders = {
            "ours": (ours, layouts[mine]),
            f"ours, {other}": (ours, layouts[other]),
            "transformers": (theirs, hf_model),
        }
        prompt = torch.randint(0, GPT2_124M.vocab_size, (batch, args.prompt_tokens))
        for fn, m in contenders.values():
            fn(m, prompt, 4)  # warm up
        times: dict[str, list[float]] = {name: [] for name in contenders}
        outputs = {}
        for _ in range(args.rounds):
            for name, (fn, m) in contenders.items():
                began = time.perf_counter()
                outputs[name] = fn(m, prompt, args.new_tokens)
                times[name].append(time.perf_counter() - began)
        tokens = batch * args.new_tokens
        rate = {name: tokens / min(times[name]) for name in contenders}
        ours_rate[batch] = rate["ours"]
        agree = sum(
            a == b
            for x, y in zip(outputs["ours"], outputs["transformers"], strict=True)
            for a, b in zip(x, y, strict=True)
        )
        print(
            f"  batch {batch}: "
            + ", ".join(f"{name} {rate[name]:6.1f}" for name in contenders)
            + f"; ours / transformers {rate['ours'] / rate['transformers']:4.2f}x"
            + f" (same greedy tokens as transformers: {agree}/{tokens})"
        )
        median = (f"{name} {tokens / statistics.median(times[name]):6.1f}" for name in contenders)
        print("           median: " + ", ".join(median))

    # each decode step reads every matrix once; the position table only one row
    weight_bytes = 4 * (n_params - trained.wpe.weight.numel())
    bound = bandwidth / weight_bytes
    print(
        f"\n(c) memory bandwidth, 1 GiB copy: {bandwidth / 1e9:.1f} GB/s with {args.threads} "
        f"threads ({one_thread / 1e9:.1f} GB/s with 1); weights {weight_bytes / 1e6:.0f} MB read "
        f"per token, so batch 1 can reach at most {bound:.1f} tokens/s. Ours "
        f"{ours_rate[1]:.1f} tokens/s = {ours_rate[1] / bound:.0%} of that bound (weights "
        f"streamed at {ours_rate[1] * weight_bytes / 1e9:.1f} GB/s)"
    )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
