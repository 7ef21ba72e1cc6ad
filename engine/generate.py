"""Sampling from a GPT: batched KV-cache decoding, text streamed as it decodes, the command line.

Three layers, each usable alone. `decode` turns token prompts into the next token of every row,
step by step, over one preallocated KV cache. `Stream` turns text prompts into text pieces: it
crops prompts to the context, never splits a multi-byte character and honours stop strings.
`generate` is the one-call helper the trainer uses for its samples.

`python -m engine.generate RUN_DIR|CHECKPOINT|hf:PATH` samples from the command line; with no
prompt on a terminal it opens a chat session (engine.chat), and `--serve` speaks the studio's
NDJSON protocol (engine.chat_protocol).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import UsageError, cli_entry
from engine.model import GPT
from engine.protocol import MAX_NEW_TOKENS, SEED_RANGE
from engine.tokenizer import Tokenizer

# Past the context the window slides: the oldest quarter is dropped and the cache rebuilt from
# the rest, so a rebuild (a prefill) happens once every block_size/4 tokens, not every token.
SLIDE_KEEP = 0.75
INCOMPLETE = "\ufffd"  # what a decoder shows for the bytes of a character not yet complete


@dataclass(frozen=True)
class Sampling:
    """How to choose each next token; every value is checked once, here."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 200  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; above 1 discourages tokens already present
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: a fresh random seed per generation

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or not 0 < self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UsageError(
                f"max tokens must be a whole number from 1 to {MAX_NEW_TOKENS:,}, "
                f"got {self.max_new_tokens!r}"
            )
        if not _is_number(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be 0 (greedy) or more, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise UsageError(f"top-k must be a whole number, 0 (off) or more, got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be above 0 and at most 1 (1: off), got {self.top_p!r}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UsageError(
                f"repetition penalty must be above 0 (1: off), got {self.repetition_penalty!r}"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UsageError(f"stop strings must be non-empty text, got {list(self.stop)!r}")
        low, high = SEED_RANGE
        if self.seed is not None and (not _is_int(self.seed) or not low <= self.seed <= high):
            raise UsageError(f"seed must be a whole number from {low} to {high}, got {self.seed!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# Tokens


def choose(
    logits: torch.Tensor,
    s: Sampling,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of each row, (B,), from its logits (B, V).

    `seen` (B, V) marks tokens already in each row, for the repetition penalty. The order is the
    usual one: penalty, temperature, top-k, top-p, then sample.
    """
    if seen is not None and s.repetition_penalty != 1:
        # CTRL's penalty: shrink a positive logit, push a negative one further down
        p = s.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / s.temperature
    if 0 < s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if s.top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # keep the smallest head whose mass reaches top_p: drop a token once the ones before it
        # already hold that much (the first token is always kept)
        ordered = ordered.masked_fill(probs.cumsum(dim=-1) - probs >= s.top_p, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, ordered)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A private random stream: sampling never disturbs the global RNG a trainer relies on."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()
def decode(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    s: Sampling,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield each step's next token for every row, (B,), for `s.max_new_tokens` steps.

    Prompts (non-empty, at most block_size tokens; see `fit_prompt`) are left-padded into one
    batch; padding is masked and each row's positions start at its first real token, so within
    the context a row decodes exactly as it would alone (past it, the rows slide together).
    Only the first `vocab_size` logits are sampled: the model's padding rows are never chosen.
    A consumer may stop early by closing the iterator.
    """
    # a torch.compile'd model would recompile for every new cache length; decode runs eagerly
    model = getattr(model, "_orig_mod", model)
    block = model.cfg.block_size
    if not prompts or any(not 0 < len(p) <= block for p in prompts):
        raise ValueError(f"decode needs 1 to {block} tokens per prompt; use fit_prompt")
    device = next(model.parameters()).device
    vocab = vocab_size or model.cfg.vocab_size
    B, longest, steps = len(prompts), max(len(p) for p in prompts), s.max_new_tokens
    # every token of every row, so a full window can be rebuilt after sliding
    seq = torch.zeros(B, longest + steps, dtype=torch.long)
    pad = torch.tensor([longest - len(p) for p in prompts])
    for row, p in enumerate(prompts):
        seq[row, pad[row] : longest] = torch.tensor(p, dtype=torch.long)
    seq, pad = seq.to(device), pad.to(device)
    seen = None
    if s.repetition_penalty != 1:
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
        for row, p in enumerate(prompts):
            seen[row, [t for t in p if t < vocab]] = True
    generator = make_generator(device, s.seed)
    cache = model.make_cache(B, max_len=min(block, longest + steps))
    was_training = model.training
    model.eval()
    try:
        start, end = 0, longest  # the window of seq the cache holds
        row_pad = pad if bool(pad.any()) else None
        logits = model(seq[:, :end], cache=cache, last_only=True, pad=row_pad)[0]
        for step in range(steps):
            token = choose(logits[:, -1, :vocab], s, seen, generator)
            yield token
            if step == steps - 1:
                break
            seq[:, end] = token
            end += 1
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            if cache.pos < cache.max_len:
                logits = model(token[:, None], cache=cache, last_only=True, pad=row_pad)[0]
                continue
            # the context is full: keep its most recent part and rebuild the cache from it
            start = end - max(1, int(block * SLIDE_KEEP))
            shifted = (pad - start).clamp(min=0)
            row_pad = shifted if bool(shifted.any()) else None
            cache.reset()
            logits = model(seq[:, start:end], cache=cache, last_only=True, pad=row_pad)[0]
    finally:
        model.train(was_training)


def decoding_layout(model: GPT) -> GPT:
    """Store every matrix transposed in memory, its shape and values unchanged.

    Decoding one row, a step's time on a CPU is the time to stream the weights once, and MKL
    streams a matrix kept as (in, out) about 1.3x faster than nn.Linear's (out, in); with 8
    rows the usual order is faster again (bench/bench_generate.py). So only single-row CPU
    sampling uses this, and never the trainer's model.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.t().contiguous().t()
    return model


# ---------------------------------------------------------------------------------------------
# Text


def fit_prompt(tokenizer: Tokenizer, prompt: str, block_size: int) -> tuple[list[int], bool]:
    """The prompt's ids, cropped to the most recent `block_size`, and whether it was cropped.

    An empty prompt starts from the end-of-text token: a new document, unconditioned.
    """
    ids = tokenizer.encode(prompt, allow_special=True) or [tokenizer.eot_id]
    return ids[-block_size:], len(ids) > block_size


@dataclass
class Completion:
    """One row's result; filled in while its Stream runs."""

    prompt: str
    text: str = ""
    tokens: int = 0
    prompt_tokens: int = 0
    truncated_prompt: bool = False  # cropped to the most recent block_size tokens
    finish: str = ""  # length | eot | stop


class IncrementalDecoder:
    """Incremental decoding that only ever emits whole characters.

    A byte-level token can end inside a UTF-8 character; its decode then ends in U+FFFD until
    the next token completes it. Decoding only the tokens since the last emitted boundary keeps
    each step O(1) and leaves the context-dependent decoders (leading spaces) right.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decoded last time, for context
        self.read = 0  # ids before this are emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._take(final=False)

    def flush(self) -> str:
        """Whatever is left, incomplete characters shown as U+FFFD."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if text.endswith(INCOMPLETE) and not final:
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


class _StopFilter:
    """Holds back text that could be the start of a stop string; cuts at the first one found."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        self.text += text
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(min(hits))
        if final:
            return self._send(len(self.text))
        held = max((_overlap(self.text, s) for s in self.stops), default=0)
        return self._send(len(self.text) - held)

    def _send(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent : upto], upto
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop` (shorter than `stop`)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class Stream:
    """A batched generation in progress: iterate for `(row, text)` pieces as they decode.

    Each piece is whole characters, never past a stop string or the end-of-text token. After
    (or during) iteration `completions` holds each row's text, token count and how it ended.
    """

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], sampling: Sampling
    ) -> None:
        if not prompts:
            raise UsageError("no prompts to generate from")
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        block = model.cfg.block_size
        self.completions = [Completion(prompt=p) for p in prompts]
        self._ids = []
        for c in self.completions:
            ids, c.truncated_prompt = fit_prompt(tokenizer, c.prompt, block)
            c.prompt_tokens = len(ids)
            self._ids.append(ids)
        self.elapsed = 0.0

    def __iter__(self) -> Iterator[tuple[int, str]]:
        rows = range(len(self.completions))
        detok = [IncrementalDecoder(self.tokenizer) for _ in rows]
        stops = [_StopFilter(self.sampling.stop) for _ in rows]
        live = set(rows)
        steps = decode(self.model, self._ids, self.sampling, self.tokenizer.vocab_size)
        began = time.perf_counter()
        try:
            for tokens in steps:
                for row, token in enumerate(tokens.tolist()):
                    if row not in live:
                        continue
                    c = self.completions[row]
                    if token == self.tokenizer.eot_id:
                        c.finish = "eot"
                        piece = stops[row].feed(detok[row].flush(), final=True)
                    else:
                        c.tokens += 1
                        piece = stops[row].feed(detok[row].push(token))
                        if stops[row].stopped:
                            c.finish = "stop"
                    if piece:
                        c.text += piece
                        yield row, piece
                    if c.finish:
                        live.discard(row)
                if not live:
                    break
            for row in sorted(live):  # out of tokens: what is held back is text after all
                c = self.completions[row]
                c.finish = "length"
                piece = stops[row].feed(detok[row].flush(), final=True)
                if piece:
                    c.text += piece
                    yield row, piece
        finally:
            steps.close()
            self.elapsed = time.perf_counter() - began

    @property
    def tokens_per_s(self) -> float:
        total = sum(c.tokens for c in self.completions)
        return total / self.elapsed if self.elapsed > 0 else 0.0


def generate_batch(
    model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], sampling: Sampling
) -> list[Completion]:
    stream = Stream(model, tokenizer, prompts, sampling)
    for _ in stream:
        pass
    return stream.completions


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    seed: int | None = None,
    *,
    temperature: float = Sampling.temperature,
    top_k: int = Sampling.top_k,
    top_p: float = Sampling.top_p,
    repetition_penalty: float = Sampling.repetition_penalty,
    stop: Sequence[str] = (),
) -> str:
    """The continuation of one prompt: what the trainer shows as a sample."""
    sampling = Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=tuple(stop),
        seed=seed,
    )
    return generate_batch(model, tokenizer, [prompt], sampling)[0].text


# ---------------------------------------------------------------------------------------------
# Command line


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
    parser.add_argument("--max-tokens", type=int, default=d.max_new_tokens)
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    from engine import chat, checkpoint
    from engine.tokenizer import from_spec

    args = _parser().parse_args(argv)
    for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be 1 or more, got {value}")
    sampling = Sampling(
        max_new_tokens=args.max_tokens,
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
