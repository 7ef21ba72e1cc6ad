"""`python -m engine.generate RUN_DIR|CHECKPOINT|hf:PATH`: sample from a model.

With no prompt on a terminal it opens a chat session (engine.chat), and `--serve` speaks the
studio's NDJSON protocol (engine.contract.events).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from engine import chat, checkpoint
from engine.contract.errors import UsageError, cli_entry
from engine.contract.sampling import Sampling
from engine.device import auto
from engine.generate import Stream, decoding_layout
from engine.model import GPT
from engine.tokenizer import Tokenizer, from_spec


def _parser() -> argparse.ArgumentParser:
    d = Sampling()
    parser = argparse.ArgumentParser(
        prog="python -m engine.generate",
        description="Sample from a model. With no prompt on a terminal: an interactive session.",
    )
    parser.add_argument(
        "source", help="a run directory (its best checkpoint, else latest), a .pt file or hf:PATH"
    )
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--prompt", help="the text to continue ('' for a new document)")
    given.add_argument("--prompt-file", help="a file whose whole text is the prompt")
    given.add_argument("--prompts-file", help="a file of prompts, one a line, sampled as a batch")
    given.add_argument(
        "--serve", action="store_true", help="answer JSON requests on stdin (for the studio)"
    )
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens)
    parser.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=d.top_k, help="0: off")
    parser.add_argument("--top-p", type=float, default=d.top_p, help="1: off")
    parser.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    parser.add_argument(
        "--stop", action="append", default=[], help="end a sample at this text (repeatable)"
    )
    parser.add_argument("--seed", type=int, help="for repeatable samples (default: random)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows decoded together")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    return parser


def _read_prompts(args: argparse.Namespace) -> list[str] | None:
    """The prompts the flags give, or None for an interactive session."""
    if args.prompt is not None:
        return [args.prompt]
    flag, path = (
        ("--prompt-file", args.prompt_file)
        if args.prompt_file
        else ("--prompts-file", args.prompts_file)
    )
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{flag}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{flag}: cannot read {path} as UTF-8 text ({err})") from None
    if flag == "--prompt-file":
        if not text:
            raise UsageError(f"{flag}: {path} is empty; give a file holding the prompt")
        return [text]
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{flag}: {path} holds no prompts; write one prompt a line")
    return prompts


def pick_device(name: str) -> torch.device:
    if name == "auto":  # the same choice training makes
        return torch.device(auto())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available; use cpu")
    return device


def _print_samples(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    sampling: Sampling,
    batch_size: int,
) -> None:
    """One row streams as it decodes; a batch prints each sample whole, in order."""
    out, note = sys.stdout, sys.stderr
    block, tokens, seconds = model.cfg.block_size, 0, 0.0
    for first in range(0, len(prompts), batch_size):
        stream = Stream(model, tokenizer, prompts[first : first + batch_size], sampling)
        for number, c in enumerate(stream.completions, start=first + 1):
            if c.truncated_prompt:
                print(
                    f"note: prompt {number} is longer than the context; "
                    f"kept its last {block} tokens",
                    file=note,
                )
        if len(prompts) == 1:
            out.write(prompts[0])
            for _, piece in stream:
                out.write(piece)
                out.flush()
            out.write("\n")
        else:
            for _ in stream:
                pass
            for c in stream.completions:
                out.write(f"{c.prompt}{c.text}\n{'-' * 40}\n")
        out.flush()
        tokens += sum(c.tokens for c in stream.completions)
        seconds += stream.elapsed
    rate = tokens / seconds if seconds else 0.0
    print(f"{tokens} tokens in {seconds:.1f} s ({rate:.1f} tokens/s)", file=note)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be 1 or more, got {value}")
    sampling = Sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    prompts = _read_prompts(args)
    if prompts is None and not args.serve and not sys.stdin.isatty():
        raise UsageError(
            "no prompt: give --prompt, --prompt-file or --prompts-file, or run on a terminal "
            "for an interactive session (--serve for JSON requests)"
        )
    device = pick_device(args.device)
    state = checkpoint.load_weights(args.source)
    model = checkpoint.build_model(state, device)
    rows = 1 if prompts is None else min(len(prompts) * args.num_samples, args.batch_size)
    if device.type == "cpu" and rows == 1:
        decoding_layout(model)
    tokenizer = from_spec(state["tokenizer"])
    if args.serve:
        session = chat.ChatSession(model, tokenizer)
        return chat.serve(session, sampling, source=state["source"], step=int(state["step"]))
    if prompts is None:
        banner = (
            f"{state['source']} (step {state['step']}, {model.num_params():,} parameters, "
            f"context {model.cfg.block_size})\n"
        )
        return chat.repl(chat.ChatSession(model, tokenizer), sampling, banner=banner)
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    _print_samples(model, tokenizer, prompts, sampling, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
