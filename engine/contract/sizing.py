"""Sizes from a config alone: parameter shapes and counts, FLOPs per token, memory per device,
and the plan (largest micro-batch that fits, per parallel layout).

Torch-free, so the studio shows them live while a config is edited, and the engine's model is
checked against `param_shapes` so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from engine.contract.config import (
    CHOICES,
    Config,
    ModelConfig,
    TrainConfig,
    adjustments,
    checkpoint_interval,
    round_up,
    sample_interval,
    warmup_steps,
)
from engine.contract.errors import UsageError

VOCAB_MULTIPLE = 64  # embedding rows padded so matmuls hit fast kernel shapes

# Vocabulary sizes of the tiktoken encodings we know, so a config alone can be sized.
TIKTOKEN_VOCAB = {
    "cl100k_base": 100277,
    "o200k_base": 200019,
    "gpt2": 50257,
    "r50k_base": 50257,
    "p50k_base": 50281,
}
CHAR_VOCAB_GUESS = 256  # a char vocabulary is known only once the corpus is read


def padded_vocab(n: int) -> int:
    """Rows in the embedding table for a tokenizer of n ids."""
    return round_up(n, VOCAB_MULTIPLE)


def vocab_size(cfg: Config, tokenizer_vocab: int | None = None) -> int:
    """The model's (padded) vocabulary: explicit, from a known tokenizer, or the best guess."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if tokenizer_vocab is None:
        tok = cfg.tokenizer
        if tok.kind == "tiktoken":
            tokenizer_vocab = TIKTOKEN_VOCAB.get(tok.name, TIKTOKEN_VOCAB["cl100k_base"])
        elif tok.kind == "bpe":
            tokenizer_vocab = tok.vocab_size
        else:
            tokenizer_vocab = CHAR_VOCAB_GUESS
    return padded_vocab(tokenizer_vocab)


def vocab_key(cfg: Config) -> str:
    """The settings a prepared tokenizer's vocabulary follows from: the studio keeps the size a
    prepare reported under this key, and uses it while the config still names that data."""
    d, t = cfg.data, cfg.tokenizer
    return "\0".join(map(str, (d.source, d.include, d.text_column, d.format, t.kind, t.name,
                                t.vocab_size, t.path)))  # fmt: skip


def resolve_model(cfg: Config, tokenizer_vocab: int) -> ModelConfig:
    """The model config with its vocabulary fixed to the tokenizer's (padded), ready to build."""
    return dataclasses.replace(cfg.model, vocab_size=vocab_size(cfg, tokenizer_vocab))


def param_shapes(model: ModelConfig, vocab: int) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor, by the name engine.model gives it and in its order, with its shape.

    A tied output matrix is the token table, so it is listed once, as `named_parameters` lists it.
    Sizes, FSDP's shards and AdamW's per-tensor state all follow from this one list.
    """
    d, hd, h = model.n_embd, model.head_dim, model.hidden_dim
    q_out, kv_out = model.n_head * hd, model.kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d)}
    if model.pos == "learned":
        shapes["wpe.weight"] = (model.block_size, d)

    def norm(name: str, width: int = d) -> None:
        if not model.norm_affine:
            return
        shapes[f"{name}.weight"] = (width,)
        if model.norm == "layernorm" and model.bias:
            shapes[f"{name}.bias"] = (width,)

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if model.bias:
            shapes[f"{name}.bias"] = (n_out,)

    for i in range(model.n_layer):
        block = f"blocks.{i}"
        norm(f"{block}.norm1")
        linear(f"{block}.attn.qkv", d, q_out + 2 * kv_out)
        if model.qk_norm:
            norm(f"{block}.attn.q_norm", hd)
            norm(f"{block}.attn.k_norm", hd)
        linear(f"{block}.attn.proj", q_out, d)
        norm(f"{block}.norm2")
        for name in ("gate", "up") if model.mlp == "swiglu" else ("fc",):
            linear(f"{block}.mlp.{name}", d, h)
        linear(f"{block}.mlp.proj", h, d)
    norm("norm_f")
    if not model.tie_embeddings:
        shapes["lm_head.weight"] = (vocab, d)
    return shapes


PARTS = {"wte": "token_embedding", "wpe": "position_embedding", "blocks": "blocks",
         "norm_f": "final_norm", "lm_head": "lm_head"}  # fmt: skip


def param_count(model: ModelConfig, vocab: int) -> dict[str, int]:
    """Parameters by part, counted exactly as engine.model builds them."""
    counts = dict.fromkeys(PARTS.values(), 0)
    for name, shape in param_shapes(model, vocab).items():
        counts[PARTS[name.split(".")[0]]] += math.prod(shape)
    counts["total"] = sum(counts.values())
    return counts


def flops_per_token(model: ModelConfig, vocab: int, seq_len: int | None = None) -> int:
    """Training FLOPs per token, 6N + 12·L·T·d (PaLM appendix B), for MFU.

    N counts the weights that take part in matrix multiplies: not the position table, nor the
    token table unless it doubles as the output projection.
    """
    counts = param_count(model, vocab)
    n = counts["total"] - counts["position_embedding"]
    if not model.tie_embeddings:
        n -= counts["token_embedding"]
    t = seq_len or model.block_size
    return 6 * n + 12 * model.n_layer * t * model.n_embd


def memory_estimate(
    cfg: Config,
    tokenizer_vocab: int | None = None,
    world_size: int = 1,
    parallel: str | None = None,
) -> dict[str, float]:
    """Training memory in bytes on one device, by part, for a first answer to "will it fit".

    Weights, gradients and AdamW's two moments are fp32 (4 bytes each, 16 per parameter), and
    AdamW keeps a 4-byte step count per tensor; with train.optimizer = "muon" the blocks'
    matrices keep one momentum buffer (4 bytes) and no step count instead. With `world_size` processes, DDP (the default
    `parallel`: `cfg.train.parallel`) keeps all of that on every GPU; FSDP keeps a 1/world_size
    piece of each tensor (cut along its first dimension into equal, padded pieces, as
    `fully_shard` does), plus the weights it gathers while computing: the root's (embeddings,
    final norm, output) and two blocks' (the one computing and the next, fetched ahead) in the
    compute dtype, and one unit's gathered fp32 gradients before they are reduce-scattered.
    Activations depend only on the micro-batch, so they are the same either way.

    With LoRA (`lora.rank` > 0) the base is frozen: it needs its weights and nothing else, and
    only the adapters (rank × (in + out) per target layer) have gradients and AdamW moments.
    """
    m, t = cfg.model, cfg.train
    vocab = vocab_size(cfg, tokenizer_vocab)
    shapes = param_shapes(m, vocab)
    n = sum(math.prod(s) for s in shapes.values())
    # Muon's matrices keep one moment, not two, and no step count (see engine.optim)
    muon = {k for k, s in shapes.items() if t.optimizer == "muon" and k.startswith("blocks.")
            and len(s) == 2}  # fmt: skip
    steps = 4.0 * (len(shapes) - len(muon))  # AdamW's step count: one float32 per tensor
    half = _half_precision(t)
    if world_size > 1 and (parallel or t.parallel) == "fsdp":
        local = sum(-(-s[0] // world_size) * math.prod(s[1:]) for s in shapes.values())
        block = sum(math.prod(s) for k, s in shapes.items() if k.startswith("blocks.0."))
        root = n - m.n_layer * block
        out = {
            "params": 4.0 * local + (root + 2 * block) * (2 if half else 4),
            "grads": 4.0 * local + 4.0 * max(root, block),
            "optimizer": 8.0 * local
            - 4.0 * sum(-(-shapes[k][0] // world_size) * shapes[k][1] for k in muon)
            + steps,
        }
    else:
        moments = 8.0 * n - 4.0 * sum(math.prod(shapes[k]) for k in muon)
        out = {"params": 4.0 * n, "grads": 4.0 * n, "optimizer": moments + steps}
    if cfg.lora.rank:
        layers = [
            s for k, s in shapes.items()
            if k.startswith("blocks.") and k.split(".", 2)[2].removesuffix(".weight") in
            cfg.lora.targets and k.endswith(".weight")
        ]  # fmt: skip
        trainable = sum(cfg.lora.rank * (s[0] + s[1]) for s in layers)
        frozen = out["params"]
        out["params"] = frozen + 4.0 * trainable
        out["grads"] = 4.0 * trainable
        out["optimizer"] = 8.0 * trainable + 8.0 * len(layers)
    out["activations"] = activation_bytes(m, vocab, t.batch_size, half)
    out["total"] = sum(out.values())
    return out


def _half_precision(t: TrainConfig) -> bool:
    """Whether activations are bf16/fp16: asked for, or what `auto` picks on a GPU."""
    return t.dtype in ("bfloat16", "float16") or (t.dtype == "auto" and t.device != "cpu")


def attention_score_bytes(model: ModelConfig, batch_size: int) -> float:
    """The fp32 T×T attention weights every layer keeps for backward when attention runs as
    plain matrix products (a CPU training with bf16 matmuls, engine.precision) instead of a
    flash kernel, which activation_bytes assumes."""
    return 4.0 * model.n_layer * batch_size * model.n_head * model.block_size**2


def activation_bytes(model: ModelConfig, vocab: int, batch_size: int, half: bool) -> float:
    """What one micro-batch's forward leaves for backward, at its peak, in bytes.

    Counted tensor by tensor as engine.model's autograd graph saves them (Korthikanti et al.
    2022, with flash attention: no T×T scores, only a log-sum-exp per head): per token and
    layer, the two norm inputs (the fp32 residual stream, also under autocast), the inputs of
    the four matrix multiplies, q, k and v (and their rotated copies with RoPE), the attention
    output, and the MLP's hidden activations (before and after GELU; gate, up, SiLU and product
    for SwiGLU). RMSNorm also keeps its normalised input. At the loss, the fp32 log-softmax is
    kept, and backward briefly holds two fp32 gradients of the same size beside it: for a
    vocabulary much wider than the model, that moment is the peak, so it is counted. Logits too
    large for one chunk (`loss_chunk_rows`) are computed a chunk at a time with their gradients
    (engine.loss): then one chunk's logits, softmax and gradient are alive at once, and the fp32
    gradients of the output layer's input and matrix are kept until backward.
    """
    m = model
    a = 2 if half else 4
    tokens = batch_size * m.block_size
    d, h = m.n_embd, m.hidden_dim
    kv = m.kv_heads * m.head_dim
    rope = m.pos == "rope"
    residual = 2 * d * 4 + (2 * d * a if m.norm == "rmsnorm" else 0)  # norm inputs (+ x·rstd)
    attention = (d + (d + 2 * kv) + (d + kv if rope else 0) + 2 * d) * a + m.n_head * 4
    if m.qk_norm:
        attention += (d + kv) * a  # the normalised queries and keys
    mlp = (d + (4 * h if m.mlp == "swiglu" else 2 * h)) * a
    per_layer = residual + attention + mlp
    if m.dropout > 0:
        per_layer += 2 * d  # one-byte masks after attention and after the MLP
    # with activation checkpointing each block keeps only its input, and one is rebuilt at a time
    kept = m.n_layer * d * 4 + per_layer if m.activation_checkpointing else m.n_layer * per_layer
    ends = d * 4 + d * a + 16  # final norm input, output projection input, int64 ids and targets
    rows = loss_chunk_rows(tokens, vocab)
    if rows < tokens:
        head = rows * vocab * 12 + tokens * d * 4 + vocab * d * 4
    else:
        head = tokens * vocab * 12
    return float(tokens * (kept + ends) + head)


LOSS_CHUNK_ELEMENTS = 1 << 25  # fp32 logits one loss chunk may hold: 128 MiB


def loss_chunk_rows(tokens: int, vocab: int) -> int:
    """Rows of logits engine.loss computes at a time: all of them while they fit in one chunk,
    else as many as do (at least one). Shared by the model and the memory estimate."""
    return max(1, min(tokens, LOSS_CHUNK_ELEMENTS // max(vocab, 1)))


USABLE_FRACTION = 0.9  # of a GPU's memory: the CUDA context, NCCL and fragmentation take the rest
MAX_MICRO_BATCH = 1 << 20


def plan(
    cfg: Config, gpus: int, gpu_memory_gb: float = 80.0, tokenizer_vocab: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per-GPU memory of a run on `gpus` GPUs of `gpu_memory_gb` GiB, under DDP and under FSDP:
    the parts, whether the total fits, and the largest micro-batch (train.batch_size) that does.

    Shared by `python -m engine.plan` and the studio, so both give the same answer.
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise UsageError(f"--gpus {gpus}: must be a whole number of GPUs, 1 or more")
    if not math.isfinite(gpu_memory_gb) or gpu_memory_gb <= 0:
        raise UsageError(f"--gpu-memory-gb {gpu_memory_gb:g}: must be a number of GiB above 0")
    budget = gpu_memory_gb * 2**30 * USABLE_FRACTION
    out = {}
    for parallel in CHOICES["train.parallel"]:
        memory = memory_estimate(cfg, tokenizer_vocab, gpus, parallel)
        out[parallel] = {
            "memory": memory,
            "fits": memory["total"] <= budget,
            "max_batch_size": _largest_batch(cfg, tokenizer_vocab, gpus, parallel, budget),
        }
    return out


def _largest_batch(
    cfg: Config, tokenizer_vocab: int | None, gpus: int, parallel: str, budget: float
) -> int:
    """The largest train.batch_size whose estimate fits `budget` (0: not even one sequence)."""

    def fits(batch: int) -> bool:
        trial = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
        return memory_estimate(trial, tokenizer_vocab, gpus, parallel)["total"] <= budget

    if not fits(1):
        return 0
    low, high = 1, 2
    while high < MAX_MICRO_BATCH and fits(high):
        low, high = high, high * 2
    if fits(high):
        return high
    while high - low > 1:  # fits(low) and not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def summary(cfg: Config, tokenizer_vocab: int | None = None) -> dict[str, Any]:
    """The figures the studio and `python -m engine.config` show for a config."""
    vocab = vocab_size(cfg, tokenizer_vocab)
    counts = param_count(cfg.model, vocab)
    memory = memory_estimate(cfg, tokenizer_vocab)
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    return {
        "vocab_size": vocab,
        "vocab_is_guess": not cfg.model.vocab_size
        and tokenizer_vocab is None
        and cfg.tokenizer.kind == "char",
        "params": counts["total"],
        "params_no_embedding": counts["total"]
        - counts["token_embedding"]
        - counts["position_embedding"],
        "flops_per_token": flops_per_token(cfg.model, vocab),
        "tokens_per_step": tokens_per_step,
        "train_tokens": tokens_per_step * cfg.train.max_steps,
        "memory": memory,
        # what the run does with settings that scale with its length (config's rules)
        "warmup_steps": warmup_steps(cfg.train),
        "sample_interval": sample_interval(cfg.train),
        "checkpoint_interval": checkpoint_interval(cfg),
        "adjustments": adjustments(cfg),
    }
