"""One run configuration: dataclasses, TOML in and out, command-line overrides, validation, sizes.

This module never imports torch. The studio imports it to edit configs and to show the parameter
count and memory estimate live, and the studio must start instantly and never touch the GPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import UsageError, cli_entry
from engine.files import atomic_write_text
from engine.tokenizer import BPE_MAX_VOCAB, BPE_MIN_VOCAB

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

EOT = "<|endoftext|>"
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
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


class ConfigError(UsageError):
    """A config value that cannot be used; the message names where it came from."""


@dataclass
class ModelConfig:
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    n_kv_head: int = 0  # 0: same as n_head (plain multi-head attention)
    block_size: int = 256
    vocab_size: int = 0  # 0: taken from the tokenizer, padded to a multiple of 64
    dropout: float = 0.0
    bias: bool = False
    pos: str = "learned"  # learned | rope
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_affine: bool = True  # false: norms without learned gains (parameter-free RMSNorm)
    mlp: str = "gelu"  # gelu | swiglu | relu2 (relu squared, not gated)
    mlp_hidden: int = 0  # 0: 4*n_embd for gelu and relu2, about 8/3*n_embd (x64) for swiglu
    qk_norm: bool = False  # normalise each head's queries and keys before attention (Qwen3)
    logit_softcap: float = 0.0  # > 0: logits squashed smoothly into (-cap, cap); 0: off
    zero_init: bool = False  # output projections of attention and MLP start at zero
    tie_embeddings: bool = True
    activation_checkpointing: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            # two input matrices instead of one: 2/3 of 4d keeps the parameter count of a GELU MLP
            return _round_up(int(8 * self.n_embd / 3), 64)
        return 4 * self.n_embd


@dataclass
class TokenizerConfig:
    kind: str = "char"  # char | bpe | tiktoken
    name: str = "cl100k_base"  # tiktoken encoding
    vocab_size: int = 8192  # bpe: size to train to
    path: str = ""  # bpe: an existing tokenizer.json instead of training one


@dataclass
class DataConfig:
    source: str = "builtin:prose"
    text_column: str = "text"  # jsonl field / parquet column
    include: str = "*.txt"  # glob for files under a directory source
    val_fraction: float = 0.01
    streaming: bool = False  # tokenize on the fly instead of preparing shards first
    cache_dir: str = ""  # prepared shards; "": $GPT_STUDIO_CACHE or ~/.cache/gpt-studio
    num_workers: int = 0  # tokenizing processes; 0: one per core


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: ddp (a full copy per GPU) | fsdp (sharded)
    batch_size: int = 12
    grad_accum: int = 1
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    optimizer: str = "adamw"  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
    lr_schedule: str = "cosine"  # cosine | linear | constant | wsd
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # optimizer = "muon": each group's own learning rate (the schedule scales all of them alike)
    # and weight decay; train.lr then drives only the 1-D gains and biases
    matrix_lr: float = 0.02  # Muon: the hidden 2-D matrices of every block
    matrix_weight_decay: float = 0.0
    embedding_lr: float = 0.2  # AdamW: the token (and position) tables
    embedding_weight_decay: float = 0.0
    head_lr: float = 0.004  # AdamW: the output layer, when untied
    head_weight_decay: float = 0.0
    muon_momentum: float = 0.95
    muon_momentum_warmup: int = 300  # steps to raise Muon's momentum from 0.85; 0: none
    eval_interval: int = 250
    eval_steps: int = 20
    sample_interval: int = 500
    sample_prompts: list[str] = field(default_factory=lambda: ["\n"])
    sample_tokens: int = 200
    seed: int = 1337
    init_from: str = ""  # a checkpoint to start from (fine-tuning)


@dataclass
class CheckpointConfig:
    interval: int = 1000
    keep_last: int = 5
    keep_best: bool = True


@dataclass
class LogConfig:
    interval: int = 10
    csv: bool = False
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "gpt-studio"


@dataclass
class Config:
    name: str = "run"
    out_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in fields(Config)
    if f.default_factory is not dataclasses.MISSING
}
TOP_LEVEL = [f.name for f in fields(Config) if f.name not in SECTIONS]

CHOICES: dict[str, tuple[str, ...]] = {
    "model.pos": ("learned", "rope"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp": ("gelu", "swiglu", "relu2"),
    "tokenizer.kind": ("char", "bpe", "tiktoken"),
    "train.dtype": ("auto", "float32", "bfloat16", "float16"),
    "train.lr_schedule": ("cosine", "linear", "constant", "wsd"),
    "train.optimizer": ("adamw", "muon"),
    "train.parallel": ("ddp", "fsdp"),
}
POSITIVE = {
    "model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.rope_theta",
    "model.norm_eps", "train.batch_size", "train.grad_accum", "train.max_steps", "train.lr",
    "train.eval_interval", "train.eval_steps", "train.sample_interval", "train.sample_tokens",
    "checkpoint.interval", "checkpoint.keep_last", "log.interval",
}  # fmt: skip
NON_NEGATIVE = {
    "model.n_kv_head", "model.vocab_size", "model.mlp_hidden", "train.min_lr",
    "train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.seed",
    "data.num_workers", "model.logit_softcap", "train.matrix_lr", "train.embedding_lr",
    "train.head_lr", "train.matrix_weight_decay", "train.embedding_weight_decay",
    "train.head_weight_decay", "train.muon_momentum_warmup",
}  # fmt: skip
FRACTIONS = {"model.dropout", "data.val_fraction", "train.decay_fraction"}  # in [0, 1)
BETAS = {"train.beta1", "train.beta2", "train.muon_momentum"}  # in [0, 1)


# ---------------------------------------------------------------------------------------------
# Loading, saving, overriding


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML config, apply `--section.key=value` overrides, and validate the result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file (give a .toml file, e.g. presets/tiny.toml)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    cfg = from_dict(raw, origin=str(path))
    origins = apply_overrides(cfg, overrides)
    for where, value, allowed in _faults(cfg):
        raise ConfigError(f"{origins.get(where, str(path))}: {where} = {value!r} {allowed}")
    return cfg


def presets() -> dict[str, Path]:
    """The shipped presets by name, smallest first: tiny, mini, medium, large."""
    order = ["tiny", "mini", "medium", "large"]
    found = {p.stem: p for p in PRESETS_DIR.glob("*.toml")}
    return dict(
        sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 9, kv[0]))
    )


def load_preset(name: str, overrides: Sequence[str] = ()) -> Config:
    found = presets()
    if name not in found:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(found)}")
    return load(found[name], overrides)


def preset_description(path: str | Path) -> str:
    """The comment on a preset's first line: what it is for and its size."""
    first = Path(path).read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def loads(text: str, origin: str = "<string>") -> Config:
    """Parse and validate a config from TOML text (the studio's editor and tests use this)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: not valid TOML: {err}") from None
    cfg = from_dict(raw, origin=origin)
    validate(cfg, origin=origin)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def save(cfg: Config, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the config as TOML; an existing file is replaced only when asked, and atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; choose another name or allow overwriting")
    atomic_write_text(path, dumps(cfg))
    return path


def from_dict(raw: dict[str, Any], origin: str = "<dict>") -> Config:
    """Build a Config from nested dicts, checking every key and type (not yet cross-field rules)."""
    cfg = Config()
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: [{key}] must be a table, got {value!r}")
            section = getattr(cfg, key)
            for sub, subvalue in value.items():
                _set(section, key, sub, subvalue, origin)
        else:
            _set(cfg, "", key, value, origin)
    return cfg


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> dict[str, str]:
    """Apply `--section.key=value` (or `--name=value` for top-level keys) in order.

    Returns which override set each dotted key, so a later fault can name the override.
    """
    origins: dict[str, str] = {}
    for item in overrides:
        body = item[2:] if item.startswith("--") else item
        if "=" not in body:
            raise ConfigError(
                f"override {item!r}: expected --section.key=value, e.g. --train.lr=3e-4"
            )
        dotted, text = body.split("=", 1)
        section, _, key = dotted.rpartition(".")
        origin = f"override {item!r}"
        value = _parse_value(text)
        if section:
            if section not in SECTIONS:
                raise ConfigError(
                    f"{origin}: unknown section [{section}]{_did_you_mean(section, SECTIONS)}"
                )
            _set(getattr(cfg, section), section, key, value, origin)
        else:
            _set(cfg, "", key, value, origin)
        origins[dotted] = origin
    return origins


def _parse_value(text: str) -> Any:
    """A TOML value if it parses as one (3e-4, true, [..], "quoted"), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set(target: Any, section: str, key: str, value: Any, origin: str) -> None:
    where = f"{section}.{key}" if section else key
    known = {f.name: f for f in fields(target) if f.name not in SECTIONS}
    if key not in known:
        scope = f"[{section}]" if section else "the top level"
        if section:
            hint = _did_you_mean(key, known, prefix=f"{section}.")
        elif key in SECTIONS:
            hint = f" ([{key}] is a table)"
        else:
            hint = _did_you_mean(key, [*known, *SECTIONS])
        raise ConfigError(f"{origin}: unknown key {where!r} in {scope}{hint}")
    setattr(target, key, _coerce(value, known[key], where, origin))


def _coerce(value: Any, f: dataclasses.Field, where: str, origin: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    bad = f"{origin}: {where} = {value!r} must be "
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(bad + "true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(bad + "a whole number")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(bad + "a finite number")
            return float(value)
        raise ConfigError(bad + "a number")
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # --name=123 on the command line
        raise ConfigError(bad + "a string")
    if kind == "list[str]":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(bad + 'a list of strings, e.g. ["Once upon a time", "def "]')
    raise AssertionError(f"no coercion for field type {kind}")  # our bug


def _did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Validation


def validate(cfg: Config, origin: str = "config") -> Config:
    """Raise on the first fault: right for a command line, where one clear line is the answer."""
    for where, value, allowed in _faults(cfg):
        raise ConfigError(f"{origin}: {where} = {value!r} {allowed}")
    return cfg


def check(cfg: Config) -> dict[str, str]:
    """Every fault, keyed by dotted field name: a form shows each one beside its field."""
    faults: dict[str, str] = {}
    for where, value, allowed in _faults(cfg):
        faults.setdefault(where, f"{value!r} {allowed}")
    return faults


def _faults(cfg: Config) -> Iterable[tuple[str, Any, str]]:
    """(field, value, what is allowed) for each fault: ranges, choices, rules across fields."""
    if not cfg.name or any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        yield "name", cfg.name, "must be a plain, non-empty folder name (no slashes)"
    if not cfg.out_dir:
        yield "out_dir", cfg.out_dir, "must be a folder path, e.g. 'runs'"

    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            where = f"{section}.{f.name}"
            value = getattr(getattr(cfg, section), f.name)
            if where in CHOICES and value not in CHOICES[where]:
                yield where, value, f"must be one of {', '.join(CHOICES[where])}"
            elif where in POSITIVE and value <= 0:
                yield where, value, "must be greater than 0"
            elif where in NON_NEGATIVE and value < 0:
                yield where, value, "must be 0 or more"
            elif where in FRACTIONS | BETAS and not 0 <= value < 1:
                yield where, value, "must be at least 0 and below 1"

    m, t, tok = cfg.model, cfg.train, cfg.tokenizer
    if m.n_head > 0 and m.n_embd > 0:
        if m.n_embd % m.n_head:
            low = m.n_embd - m.n_embd % m.n_head
            near = " or ".join(str(n) for n in (low, low + m.n_head) if n > 0)
            yield (
                "model.n_embd",
                m.n_embd,
                f"must be divisible by model.n_head = {m.n_head} (e.g. {near})",
            )
        elif m.pos == "rope" and m.head_dim % 2:
            yield "model.n_embd", m.n_embd, f"gives odd head size {m.head_dim}; rope needs it even"
        if m.n_kv_head > 0 and (m.n_kv_head > m.n_head or m.n_head % m.n_kv_head):
            yield "model.n_kv_head", m.n_kv_head, f"must divide model.n_head = {m.n_head} (0: same)"
    if tok.kind == "bpe" and not tok.path and not BPE_MIN_VOCAB <= tok.vocab_size <= BPE_MAX_VOCAB:
        yield (
            "tokenizer.vocab_size",
            tok.vocab_size,
            f"must be from {BPE_MIN_VOCAB} to {BPE_MAX_VOCAB} for bpe",
        )
    if m.vocab_size and tok.kind == "bpe" and m.vocab_size < tok.vocab_size:
        yield (
            "model.vocab_size",
            m.vocab_size,
            f"is below tokenizer.vocab_size = {tok.vocab_size} (0: automatic)",
        )
    if tok.kind == "tiktoken" and not tok.name:
        yield "tokenizer.name", tok.name, "must name a tiktoken encoding, e.g. cl100k_base"
    if not cfg.data.source:
        yield "data.source", cfg.data.source, "must name a corpus, e.g. 'builtin:prose' or a path"
    if t.min_lr > t.lr > 0:
        yield "train.min_lr", t.min_lr, f"must not exceed train.lr = {t.lr}"
    if t.warmup_steps > t.max_steps > 0:
        yield "train.warmup_steps", t.warmup_steps, f"exceeds train.max_steps = {t.max_steps}"
    if not (t.device in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(t.device)):
        yield "train.device", t.device, "must be auto, cpu, cuda, cuda:N or mps"


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


# ---------------------------------------------------------------------------------------------
# Sizes: parameter count and memory, from the config alone


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_vocab(n: int) -> int:
    """Rows in the embedding table for a tokenizer of n ids."""
    return _round_up(n, VOCAB_MULTIPLE)


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
    out["activations"] = activation_bytes(m, vocab, t.batch_size, half)
    out["total"] = sum(out.values())
    return out


def _half_precision(t: TrainConfig) -> bool:
    """Whether activations are bf16/fp16: asked for, or what `auto` picks on a GPU."""
    return t.dtype in ("bfloat16", "float16") or (t.dtype == "auto" and t.device != "cpu")


def activation_bytes(model: ModelConfig, vocab: int, batch_size: int, half: bool) -> float:
    """What one micro-batch's forward leaves for backward, at its peak, in bytes.

    Counted tensor by tensor as engine.model's autograd graph saves them (Korthikanti et al.
    2022, with flash attention: no T×T scores, only a log-sum-exp per head): per token and
    layer, the two norm inputs (the fp32 residual stream, also under autocast), the inputs of
    the four matrix multiplies, q, k and v (and their rotated copies with RoPE), the attention
    output, and the MLP's hidden activations (before and after GELU; gate, up, SiLU and product
    for SwiGLU). RMSNorm also keeps its normalised input. At the loss, the fp32 log-softmax is
    kept, and backward briefly holds two fp32 gradients of the same size beside it: for a
    vocabulary much wider than the model, that moment is the peak, so it is counted.
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
    return float(tokens * (kept + ends) + tokens * vocab * 12)


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
    }


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'. Unit 'B' takes binary prefixes (MiB), 'FLOP' SI ones (GFLOP)."""
    base, prefixes = 1000, ("", "K", "M", "B", "T")
    if unit == "B":
        base, prefixes = 1024, ("", "Ki", "Mi", "Gi", "Ti")
    elif unit:
        prefixes = ("", "K", "M", "G", "T", "P", "E")
    for prefix in prefixes:
        if abs(n) < base or prefix == prefixes[-1]:
            break
        n /= base
    number = f"{n:.3g}" if prefix else f"{n:g}"
    return f"{number} {prefix}{unit}" if unit else f"{number}{prefix}"


def duration(seconds: float | None) -> str:
    """90 -> '1m30s', 5400 -> '1h30m'; None (not known yet) -> '-'."""
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """`python -m engine.config CONFIG [--section.key=value ...]`: validate and size a config."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m engine.config",
        description="Check a run config and show its size: parameters, FLOPs and memory.",
    )
    parser.add_argument("config", help="a TOML config, e.g. presets/tiny.toml")
    parser.add_argument("--print", action="store_true", help="print the resolved TOML")
    args, overrides = parser.parse_known_args(argv)
    cfg = load(args.config, overrides)
    print(dumps(cfg) if args.print else describe(cfg), end="")
    return 0


def describe(cfg: Config) -> str:
    """A few readable lines on what a config builds and what it costs."""
    s = summary(cfg)
    m, mem = cfg.model, s["memory"]
    heads = f"{m.n_head} heads" + (f" ({m.kv_heads} kv)" if m.kv_heads != m.n_head else "")
    guess = " (a guess: a char vocabulary is known once the corpus is read)"
    parts = ", ".join(f"{k} {human(v, 'B')}" for k, v in mem.items() if k != "total")
    step_flop = s["flops_per_token"] * s["tokens_per_step"]
    return "\n".join(
        [
            f"{cfg.name}: {m.n_layer} layers, {heads}, {m.n_embd} wide, context {m.block_size}; "
            f"{m.pos} positions, {m.norm}, {m.mlp}"
            + (", qk-norm" if m.qk_norm else "")
            + f"; {cfg.train.optimizer}",
            f"  tokenizer   {cfg.tokenizer.kind}, vocab {s['vocab_size']}"
            + (guess if s["vocab_is_guess"] else ""),
            f"  parameters  {human(s['params'])} "
            f"({human(s['params_no_embedding'])} without embeddings)",
            f"  per step    {human(s['tokens_per_step'])} tokens, {human(step_flop, 'FLOP')}",
            f"  whole run   {human(s['train_tokens'])} tokens in {cfg.train.max_steps} steps",
            f"  memory      {human(mem['total'], 'B')} per device ({parts})",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
