"""`python -m engine.eval CHECKPOINT --data SOURCE`: loss, perplexity and bits per byte.

Loss and perplexity are per token, so they only compare models that share a tokenizer. Bits per
byte divides the same total surprise by the UTF-8 bytes the predicted tokens spell, which any two
models of the same text share: a char model and a cl100k model can be ranked by it.

The split is read whole (or up to --max-tokens) in consecutive windows, every token predicted
once from the context of the window before it, so the figure is the same on every run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import checkpoint, data, device
from engine.contract import config
from engine.contract.errors import UsageError
from engine.model import GPT
from engine.tokenizer import Tokenizer, from_spec

SPLITS = ("val", "train", "all")


@dataclass
class Report:
    loss: float  # mean nats per predicted token
    ppl: float
    bits_per_byte: float
    tokens: int
    bytes: int
    source: str
    split: str
    seconds: float


def split_tokens(prepared: data.Prepared, split: str) -> list[np.ndarray]:
    names = ("train", "val") if split == "all" else (split,)
    dataset = prepared.dataset
    return [
        np.memmap(s.path, dtype=dataset.dtype, mode="r")
        for name in names
        for s in dataset.shards(name)
        if s.tokens > 1
    ]


@torch.no_grad()
def evaluate(
    model: GPT,
    tokenizer: Tokenizer,
    arrays: list[np.ndarray],
    *,
    batch_size: int = 8,
    max_tokens: int = 0,
    runtime: device.Runtime | None = None,
) -> tuple[float, int, float, int]:
    """(total nats, predicted tokens, nats on text tokens, bytes of text) over `arrays`."""
    runtime = runtime or device.pick("cpu")
    T = model.cfg.block_size
    lengths = tokenizer.token_bytes()
    byte_len = torch.zeros(model.cfg.vocab_size, dtype=torch.long)  # padding rows spell nothing
    byte_len[: len(lengths)] = torch.tensor(lengths)
    byte_len = byte_len.to(runtime.device)
    nats = text_nats = 0.0
    n_tokens = n_bytes = 0
    windows = [(a, i) for a in arrays for i in range(0, len(a) - 1, T)]
    for b in range(0, len(windows), batch_size):
        rows = []
        for a, i in windows[b : b + batch_size]:
            rows.append(torch.from_numpy(a[i : i + T + 1].astype(np.int64)))
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), -1, dtype=torch.long)
        for j, r in enumerate(rows):
            batch[j, : len(r)] = r
        batch = batch.to(runtime.device)
        x, y = batch[:, :-1].clamp(min=0), batch[:, 1:]
        with runtime.compute:
            logits, _ = model(x)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none"
        ).view_as(y)
        real = y >= 0
        counts = byte_len[y.clamp(min=0)] * real
        nats += float(loss[real].sum())
        text_nats += float(loss[counts > 0].sum())
        n_tokens += int(real.sum())
        n_bytes += int(counts.sum())
        if max_tokens and n_tokens >= max_tokens:
            break
    return nats, n_tokens, text_nats, n_bytes


def run(
    ckpt_path: str,
    source: str = "",
    split: str = "val",
    *,
    batch_size: int = 8,
    max_tokens: int = 0,
    device_name: str = "auto",
) -> Report:
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    state = checkpoint.load_weights(ckpt_path)
    runtime = device.pick(device_name)
    model = checkpoint.build_model(state, runtime.device)
    tokenizer = from_spec(state["tokenizer"])
    if not source and set(state["config"]) == {"model"}:
        raise UsageError(f"{ckpt_path} records no training data; name a corpus with --data SOURCE")
    cfg = config.from_dict(state["config"], origin=ckpt_path)
    if source:
        cfg.data = dataclasses.replace(cfg.data, source=source)
    started = time.perf_counter()
    try:
        prepared = data.prepare(cfg, tokenizer=tokenizer)
    except UsageError as err:
        if tokenizer.spec()["kind"] != "char" or "not in the char" not in str(err):
            raise
        raise UsageError(
            f"{cfg.data.source} holds text the checkpoint's char tokenizer cannot encode ({err}); "
            "a char model is evaluated on text made of its own characters"
        ) from None
    arrays = split_tokens(prepared, split)
    if not arrays:
        raise UsageError(
            f"the {split} split of {cfg.data.source} has no tokens to evaluate; try --split all"
        )
    nats, n, text_nats, n_bytes = evaluate(
        model, tokenizer, arrays, batch_size=batch_size, max_tokens=max_tokens, runtime=runtime
    )
    loss = nats / n
    return Report(
        loss=loss,
        ppl=math.exp(min(loss, 50.0)),
        bits_per_byte=text_nats / math.log(2) / max(n_bytes, 1),
        tokens=n,
        bytes=n_bytes,
        source=cfg.data.source,
        split=split,
        seconds=time.perf_counter() - started,
    )
