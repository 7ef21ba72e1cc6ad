"""Sampling from a model with its KV cache: each new token costs one position, not the context.

The trainer uses `generate` for its live samples; chat and the command line build on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.model import GPT
from engine.tokenizer import Tokenizer


@torch.no_grad()
def sample_ids(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int = 0,
    vocab_limit: int | None = None,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield new token ids one by one.

    `vocab_limit` masks the padding rows of the embedding, which no tokenizer can decode.
    When the context fills up, the cache restarts from the most recent half of it.
    """
    block = model.cfg.block_size
    device = model.wte.weight.device
    ids = list(prompt)[-block:] or [stop_id if stop_id is not None else 0]
    cache = model.make_cache(batch_size=1)
    pending = ids
    for _ in range(max_new_tokens):
        if cache.pos + len(pending) > block:
            cache.reset()
            pending = ids[-(block // 2) :]
        x = torch.tensor([pending], dtype=torch.long, device=device)
        logits, _ = model(x, cache=cache, last_only=True)
        logits = logits[0, -1].float()
        if vocab_limit is not None:
            logits[vocab_limit:] = float("-inf")
        if temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        if token == stop_id:
            return
        ids.append(token)
        pending = [token]
        yield token


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int = 200,
    seed: int | None = None,
) -> str:
    """The text a prompt continues with (without the prompt), stopping at end-of-text."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        ids = list(
            sample_ids(
                model,
                tokenizer.encode(prompt),
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                vocab_limit=tokenizer.vocab_size,
                stop_id=tokenizer.eot_id,
                generator=generator,
            )
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(ids)
