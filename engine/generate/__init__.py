"""Sampling from a GPT: batched KV-cache decoding and text streamed as it decodes.

Three layers, each usable alone. `decode` turns token prompts into the next token of every row,
step by step, over one preallocated KV cache. `Stream` turns text prompts into text pieces: it
crops prompts to the context, never splits a multi-byte character and honours stop strings.
`generate` is the one-call helper the trainer uses for its samples.

The command line, `python -m engine.generate`, is engine/generate/__main__.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.contract.errors import UsageError
from engine.contract.sampling import Sampling
from engine.model import GPT
from engine.tokenizer import Tokenizer

# Past the context the window slides: the oldest quarter is dropped and the cache rebuilt from
# the rest, so a rebuild (a prefill) happens once every block_size/4 tokens, not every token.
SLIDE_KEEP = 0.75
INCOMPLETE = "\ufffd"  # what a decoder shows for the bytes of a character not yet complete


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
    """Yield each step's next token for every row, (B,), for `s.max_tokens` steps.

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
    B, longest, steps = len(prompts), max(len(p) for p in prompts), s.max_tokens
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
    max_tokens: int,
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
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=tuple(stop),
        seed=seed,
    )
    return generate_batch(model, tokenizer, [prompt], sampling)[0].text
