"""Per-GPU memory under DDP and FSDP: the text `python -m engine.plan` prints.

Prints, per GPU, the memory of the weights, gradients, AdamW state and activations under DDP and
under FSDP, whether each fits, and the largest micro-batch that does. The arithmetic is
`engine.contract.sizing.plan`, which the studio's Config pane shares; like it, this never imports torch,
so it answers in a moment on a laptop with no GPU.
"""

from __future__ import annotations

from engine.contract import sizing
from engine.contract.config import Config
from engine.contract.render import human

ROWS = {
    "params": "parameters",
    "grads": "gradients",
    "optimizer": "optimizer state",
    "activations": "activations",
    "total": "total",
}


def describe(cfg: Config, gpus: int, gpu_memory_gb: float) -> str:
    """The plan as aligned lines of text: a header, then one column per strategy."""
    figures = sizing.plan(cfg, gpus, gpu_memory_gb)
    t, s = cfg.train, sizing.summary(cfg)
    sequences = t.batch_size * t.grad_accum * gpus
    tokens = sequences * cfg.model.block_size
    usable = gpu_memory_gb * sizing.USABLE_FRACTION
    guess = (
        " (a char vocabulary is a guess until the corpus is read)" if s["vocab_is_guess"] else ""
    )
    lines = [
        f"{cfg.name}: {human(s['params'])} parameters{guess}, on {_count(gpus, 'GPU')} "
        f"of {gpu_memory_gb:g} GiB ({usable:.3g} GiB usable each)",
        f"global batch: {_count(t.batch_size, 'sequence')} x {_count(t.grad_accum, 'micro-batch')}"
        f" x {_count(gpus, 'GPU')} = {sequences} sequences of {cfg.model.block_size} tokens, "
        f"{human(tokens)} tokens per step",
        "",
    ]
    kinds = list(figures)
    width = max(len(label) for label in [*ROWS.values(), "largest micro-batch"]) + 2
    lines.append(f"{'per GPU':<{width}}" + "".join(f"{k.upper():>12}" for k in kinds))
    for key, label in ROWS.items():
        cells = "".join(f"{human(figures[k]['memory'][key], 'B'):>12}" for k in kinds)
        lines.append(f"{label:<{width}}{cells}")
    lines.append(
        f"{'fits':<{width}}"
        + "".join(f"{'yes' if figures[k]['fits'] else 'no':>12}" for k in kinds)
    )
    lines.append(
        f"{'largest micro-batch':<{width}}"
        + "".join(f"{figures[k]['max_batch_size'] or 'none':>12}" for k in kinds)
    )
    if gpus == 1:
        lines += ["", "one GPU: FSDP has nothing to shard across, so both columns agree"]
    best = next((k for k in kinds if figures[k]["fits"]), None)
    if best is None:
        lines += ["", "neither fits: lower train.batch_size (raise train.grad_accum to keep the "
                  "global batch), set model.activation_checkpointing = true, or add GPUs"]  # fmt: skip
    elif gpus > 1 and not figures[t.parallel]["fits"]:
        lines += ["", f"train.parallel = {t.parallel!r} does not fit; add --train.parallel={best}"]
    lines.append("")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("es" if noun.endswith("h") else "s") * (n != 1)
