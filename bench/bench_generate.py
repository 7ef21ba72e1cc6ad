"""Generation speed of a GPT-2-124M-shaped model on this machine's CPU.

    python bench/bench_generate.py [--new-tokens 128] [--rounds 5] [--threads 2] [--skip-cache-check]

Prints three figures, all from one run:
  (a) a decode step with the KV cache against recomputing the whole context, at 256 and 1024
      tokens of context;
  (b) our greedy decoding against transformers' `generate()` (fp32) on the same weights exported
      with engine.export, batch 1 and batch 8, with our weights in each format
      `python -m engine.generate` offers: fp32 (one row in decoding layout, several in
      nn.Linear's), bf16 (`--dtype bfloat16`), int8 weight-only (`--quantize int8`) and
      int8 weights and activations (`--quantize int8-dynamic`). The rounds
      interleave all of them, rotating which goes first; ratios are of medians over rounds.
      Beside each: how many greedy tokens equal our fp32 model's (the tolerance a smaller
      format costs), and what `--dtype auto` picks on this machine;
  (c) batch-1 decoding against the memory-bandwidth bound: every weight is read once per token,
      so tokens/s can be at most (copy bandwidth) / (weight bytes), per format.
Random weights: speed does not depend on what the weights say.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's engine

import torch

from engine import precision
from engine.contract.config import ModelConfig
from engine.contract.sampling import Sampling
from engine.export import write_model
from engine.generate import decode, decoding_layout
from engine.model import GPT
from engine.quantize import quantize

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
        max_new_tokens=new_tokens,  # transformers' own name
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


def agreement(a: list[list[int]], b: list[list[int]]) -> int:
    """Tokens equal position by position, up to each row's first difference (after it the rows
    continue different texts, so later equality is chance)."""
    same = 0
    for x, y in zip(a, b, strict=True):
        for s, t in zip(x, y, strict=True):
            if s != t:
                break
            same += 1
    return same


def formats(trained: GPT, batch: int) -> dict[str, GPT]:
    """Our model in each weight format engine.generate offers, laid out as it would be."""
    fp32 = copy.deepcopy(trained)
    if batch == 1:
        decoding_layout(fp32)
    return {
        "fp32": fp32,
        "bf16": copy.deepcopy(trained).to(torch.bfloat16),
        "int8": quantize(copy.deepcopy(trained), "int8"),
        "int8-dynamic": quantize(copy.deepcopy(trained), "int8-dynamic"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-cache-check", action="store_true", help="leave out (a)")
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = precision.cpu_features()
    print(
        f"{features.describe()}, {args.threads} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, load average {os.getloadavg()[0]:.2f}"
    )
    # first, before the models fill memory and while the machine is likeliest to be quiet
    bandwidth, one_thread = copy_bandwidth(args.threads), copy_bandwidth(1)
    trained = GPT(GPT2_124M).eval()
    n_params = trained.num_params()
    print(f"model: GPT-2 124M shape, {n_params / 1e6:.1f}M parameters\n")

    print("(a) KV cache against recomputing the context, per new token (fp32)")
    layout = decoding_layout(copy.deepcopy(trained))
    for context in () if args.skip_cache_check else (256, 1024):
        cached, recompute = cache_vs_recompute(layout, context)
        print(
            f"  context {context:4d}: cached {cached * 1e3:7.1f} ms, recompute "
            f"{recompute * 1e3:7.1f} ms, ratio {recompute / cached:5.1f}x"
        )
    del layout

    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), GPT2_124M, trained.state_dict(), GPT2_124M.vocab_size)
        hf_model = AutoModelForCausalLM.from_pretrained(tmp).eval()
    print(
        f"\n(b) greedy decoding, {args.prompt_tokens}-token prompts, {args.new_tokens} new "
        f"tokens per row; tokens/s over all rows, median of {args.rounds} interleaved rounds"
    )
    medians: dict[int, dict[str, float]] = {}
    for batch in (1, 8):
        auto = precision.for_generation(
            features, precision.generation_calibration(trained, rows=batch)
        )
        contenders = {name: (ours, m) for name, m in formats(trained, batch).items()}
        contenders["transformers"] = (theirs, hf_model)
        prompt = torch.randint(0, GPT2_124M.vocab_size, (batch, args.prompt_tokens))
        for fn, m in contenders.values():
            fn(m, prompt, 4)  # warm up
        times: dict[str, list[float]] = {name: [] for name in contenders}
        outputs = {}
        names = list(contenders)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                fn, m = contenders[name]
                began = time.perf_counter()
                outputs[name] = fn(m, prompt, args.new_tokens)
                times[name].append(time.perf_counter() - began)
        tokens = batch * args.new_tokens
        rate = {name: tokens / statistics.median(times[name]) for name in contenders}
        medians[batch] = rate
        best = {name: tokens / min(times[name]) for name in contenders}
        print(f"  batch {batch}: --dtype auto picks {auto.dtype} ({auto.reason})")
        for name in contenders:
            line = f"    {name:13s} {rate[name]:7.1f} tok/s (best round {best[name]:7.1f})"
            if name != "transformers":
                line += (
                    f"  {rate[name] / rate['transformers']:4.2f}x transformers; greedy tokens "
                    f"equal to our fp32 {agreement(outputs[name], outputs['fp32'])}/{tokens}, "
                    f"to transformers {agreement(outputs[name], outputs['transformers'])}/{tokens}"
                )
            print(line)

    # each decode step reads every matrix once; the position table only one row
    matrices = n_params - trained.wpe.weight.numel()
    print(
        f"\n(c) memory bandwidth, 1 GiB copy: {bandwidth / 1e9:.1f} GB/s with {args.threads} "
        f"threads ({one_thread / 1e9:.1f} GB/s with 1). Batch 1, weights read once per token:"
    )
    # int8: the matrices in one byte; the token table is read only for one row, but the output
    # layer keeps its own int8 copy of it, which is counted
    for name, per_weight in (("fp32", 4), ("bf16", 2), ("int8", 1), ("int8-dynamic", 1)):
        weight_bytes = per_weight * matrices
        bound = bandwidth / weight_bytes
        rate = medians[1][name]
        print(
            f"  {name}: {weight_bytes / 1e6:4.0f} MB per token, bound {bound:6.1f} tok/s; "
            f"reached {rate:6.1f} = {rate / bound:4.0%} (weights streamed at "
            f"{rate * weight_bytes / 1e9:.1f} GB/s)"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
