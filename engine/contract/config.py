"""One run configuration: the schema (dataclasses), TOML in and out, `--section.key=value`
overrides, validation and the presets.

Torch-free like the rest of engine.contract: the studio edits configs with it, and the engine reads
them with the same rules, so a value one side accepts the other accepts too.
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

from engine.contract.errors import UsageError
from engine.files import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # shipped inside the package
BPE_MIN_VOCAB = 260  # 256 bytes, the end-of-text token and room for a few merges
BPE_MAX_VOCAB = 2**20


class ConfigError(UsageError):
    """A config value that cannot be used.

    str() is the one line a command prints; the fields let a form mark the field at fault and
    say what it accepts without parsing that line: `origin` (the file, override or form the value
    came from), `key` (dotted, e.g. "train.lr"), `value` and `allowed` ("must be ...").
    """

    def __init__(
        self,
        message: str,
        *,
        origin: str | None = None,
        key: str | None = None,
        value: Any = None,
        allowed: str | None = None,
    ) -> None:
        super().__init__(message)
        self.origin, self.key, self.value, self.allowed = origin, key, value, allowed

    @classmethod
    def field(cls, origin: str, key: str, value: Any, allowed: str) -> ConfigError:
        """A fault in one field, as "ORIGIN: KEY = VALUE ALLOWED"."""
        return cls(
            f"{origin}: {key} = {value!r} {allowed}",
            origin=origin,
            key=key,
            value=value,
            allowed=allowed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON data (for the engine's error event)."""
        value = self.value if isinstance(self.value, (str, int, float, bool, list)) else None
        return {"origin": self.origin, "key": self.key, "value": value, "allowed": self.allowed}


def setting(default: Any, help: str) -> Any:
    """A field with its one line of help, which the Config pane shows under the focused field.
    (A list default is written out as `field(default_factory=..., metadata={"help": ...})`.)"""
    return field(default=default, metadata={"help": help})


def help_for(key: str) -> str:
    """The help line of a dotted setting ("train.max_steps"); "" for a key with none."""
    section, _, name = key.rpartition(".")
    owner = SECTIONS.get(section) if section else Config
    for f in fields(owner) if owner is not None else ():
        if f.name == name:
            return str(f.metadata.get("help", ""))
    return ""


@dataclass
class ModelConfig:
    n_layer: int = setting(6, "transformer blocks stacked; more is deeper and slower")
    n_head: int = setting(6, "attention heads per block; must divide n_embd")
    n_embd: int = setting(384, "the width of every token's vector (the residual stream)")
    n_kv_head: int = setting(0, "key/value heads (grouped-query attention); 0: same as n_head")
    block_size: int = setting(256, "context length: the most tokens the model sees at once")
    vocab_size: int = setting(
        0, "rows of the token table; 0: the tokenizer's vocabulary, padded to a multiple of 64"
    )
    dropout: float = setting(0.0, "share of activations zeroed in training; 0 suits most runs")
    bias: bool = setting(False, "biases in linear layers and norms (GPT-2 had them)")
    pos: str = setting("learned", "positions: learned (a table, GPT-2) or rope (rotary)")
    rope_theta: float = setting(10000.0, "rope's base frequency; larger suits longer contexts")
    norm: str = setting("layernorm", "normalisation: layernorm (GPT-2) or rmsnorm (cheaper)")
    norm_eps: float = setting(1e-5, "a small constant that keeps the norms' division stable")
    norm_affine: bool = setting(True, "learned gains in the norms; false: parameter-free norms")
    mlp: str = setting(
        "gelu", "MLP: gelu (tanh form, GPT-2), gelu_exact (erf), swiglu (gated) or relu2"
    )
    mlp_hidden: int = setting(
        0, "MLP hidden width; 0: 4*n_embd for gelu and relu2, about 8/3*n_embd for swiglu"
    )
    qk_norm: bool = setting(
        False, "normalise each head's queries and keys before attention (Qwen3); steadier"
    )
    logit_softcap: float = setting(
        0.0, "> 0: logits squashed smoothly into (-cap, cap); 0: off (needed to export)"
    )
    zero_init: bool = setting(
        False, "attention and MLP outputs start at zero: every block starts as the identity"
    )
    tie_embeddings: bool = setting(True, "the output layer reuses the token table")
    activation_checkpointing: bool = setting(
        False, "recompute activations in the backward pass: less memory, about 30% slower"
    )

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
            return round_up(int(8 * self.n_embd / 3), 64)
        return 4 * self.n_embd


@dataclass
class TokenizerConfig:
    kind: str = setting(
        "char", "char (one id per character), bpe (trained on the corpus) or tiktoken"
    )
    name: str = setting("cl100k_base", "tiktoken: the encoding, e.g. cl100k_base or gpt2")
    vocab_size: int = setting(8192, "bpe: the vocabulary size to train to")
    path: str = setting("", "bpe: an existing tokenizer.json to use instead of training one")


@dataclass
class DataConfig:
    source: str = setting(
        "builtin:prose", "what to train on: builtin:prose, builtin:code, a file, folder or glob"
    )
    text_column: str = setting("text", "the .jsonl field or parquet column that holds the text")
    format: str = setting(
        "auto", "auto, text, or chat (conversations: loss on the assistant's tokens only)"
    )
    include: str = setting("*.txt", "which files of a folder source to read (a glob)")
    val_fraction: float = setting(0.01, "share of the corpus held out for validation")
    streaming: bool = setting(False, "tokenize on the fly instead of preparing shards first")
    cache_dir: str = setting(
        "", "where prepared shards go; empty: $GPT_STUDIO_CACHE or ~/.cache/gpt-studio"
    )
    num_workers: int = setting(0, "processes that tokenize when preparing; 0: one per core")


@dataclass
class TrainConfig:
    device: str = setting("auto", "auto (GPU if any), cpu, cuda, cuda:N or mps")
    dtype: str = setting(
        "auto", "auto, float32, bfloat16 or float16; auto picks bf16 where it is fast"
    )
    matmul_precision: str = setting(
        "auto",
        "fp32 products: highest (exact), high (GPU TF32), medium (bf16 inputs); auto: measured",
    )
    compile: bool = setting(False, "torch.compile the model: faster steps after a slow start")
    parallel: str = setting(
        "ddp", "under several processes: ddp (a full copy each) or fsdp (sharded)"
    )
    batch_size: int = setting(12, "sequences per micro-batch on each device")
    grad_accum: int = setting(1, "micro-batches summed into one step (a larger effective batch)")
    max_steps: int = setting(2000, "optimizer steps in the run")
    lr: float = setting(1e-3, "peak learning rate (AdamW; with muon, of the 1-D gains)")
    min_lr: float = setting(1e-4, "the learning rate the schedule decays to at the end")
    optimizer: str = setting(
        "adamw", "adamw, or muon (Muon for hidden matrices, AdamW for the rest)"
    )
    lr_schedule: str = setting(
        "cosine", "after warmup: cosine, linear, constant or wsd (hold, then decay)"
    )
    warmup_steps: int = setting(
        100, "steps rising to the peak learning rate; longer than the run: cut to a tenth of it"
    )
    decay_fraction: float = setting(0.2, "wsd: the share of steps spent decaying at the end")
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices")
    beta1: float = setting(0.9, "AdamW's first-moment decay (momentum)")
    beta2: float = setting(0.95, "AdamW's second-moment decay; higher is steadier")
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0: no clipping")
    # optimizer = "muon": each group's own learning rate (the schedule scales all of them alike)
    # and weight decay; train.lr then drives only the 1-D gains and biases
    matrix_lr: float = setting(0.02, "muon: learning rate of the blocks' hidden matrices")
    matrix_weight_decay: float = setting(0.0, "muon: weight decay of the hidden matrices")
    embedding_lr: float = setting(0.2, "muon: AdamW learning rate of the token and position tables")
    embedding_weight_decay: float = setting(0.0, "muon: weight decay of the embedding tables")
    head_lr: float = setting(0.004, "muon: AdamW learning rate of the output layer, when untied")
    head_weight_decay: float = setting(0.0, "muon: weight decay of the output layer")
    muon_momentum: float = setting(0.95, "muon: momentum once warmed up")
    muon_momentum_warmup: int = setting(300, "muon: steps to raise momentum from 0.85; 0: none")
    eval_interval: int = setting(250, "steps between validation losses")
    eval_steps: int = setting(20, "validation batches averaged per evaluation")
    sample_interval: int = setting(
        500, "steps between live samples; 0: a fifth of the run (a short run still shows them)"
    )
    sample_prompts: list[str] = field(
        default_factory=lambda: ["\n"], metadata={"help": "prompts the live samples continue"}
    )
    sample_tokens: int = setting(200, "tokens each live sample writes")
    seed: int = setting(1337, "seeds the weights, the data order and the samples")
    init_from: str = setting(
        "", "a checkpoint, run folder or hf:PATH to fine-tune from; empty: from scratch"
    )
    # training-health guards (engine.health): a non-finite loss or gradient norm never updates
    spike_z: float = setting(
        0.0, "also skip a step whose loss or grad norm has this z-score; 0: off"
    )
    max_bad_steps: int = setting(5, "bad steps in a row before on_unhealthy acts; 0: never")
    on_unhealthy: str = setting(
        "rollback", "rollback (to the last checkpoint, lr x rollback_lr) or stop"
    )
    rollback_lr: float = setting(0.5, "the factor a rollback multiplies the learning rate by")
    max_rollbacks: int = setting(3, "rollbacks before the run stops")
    check_memory: bool = setting(
        True, "refuse a run whose memory estimate exceeds the device's memory"
    )


LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.gate", "mlp.up", "mlp.proj")


@dataclass
class LoraConfig:
    """Low-rank adapters on a frozen train.init_from model; rank 0 fine-tunes every weight."""

    rank: int = setting(0, "LoRA rank on a train.init_from model; 0: fine-tune every weight")
    alpha: float = setting(16.0, "LoRA scale: the update is multiplied by alpha / rank")
    dropout: float = setting(0.0, "dropout on the adapters' input")
    targets: list[str] = field(
        default_factory=lambda: ["attn.qkv", "attn.proj"],
        metadata={"help": "layers that get adapters: " + ", ".join(LORA_TARGETS)},
    )


@dataclass
class CheckpointConfig:
    interval: int = setting(
        1000, "steps between checkpoints; 0: a fifth of the run (the last step always saves)"
    )
    keep_last: int = setting(5, "newest checkpoints kept; older ones are deleted")
    keep_best: bool = setting(True, "also keep the checkpoint with the best validation loss")


@dataclass
class LogConfig:
    interval: int = setting(10, "steps between loss records (the charts' resolution)")
    csv: bool = setting(False, "also write metrics.csv")
    tensorboard: bool = setting(False, "also write TensorBoard event files")
    wandb: bool = setting(False, "also log to Weights & Biases")
    wandb_project: str = setting("gpt-studio", "the Weights & Biases project")


@dataclass
class Config:
    name: str = setting("run", "the run's name: its folder under out_dir")
    out_dir: str = setting("runs", "the folder that holds runs")
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

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
    "model.mlp": ("gelu", "gelu_exact", "swiglu", "relu2"),
    "tokenizer.kind": ("char", "bpe", "tiktoken"),
    "data.format": ("auto", "text", "chat"),
    "train.dtype": ("auto", "float32", "bfloat16", "float16"),
    "train.matmul_precision": ("auto", "highest", "high", "medium"),
    "train.lr_schedule": ("cosine", "linear", "constant", "wsd"),
    "train.optimizer": ("adamw", "muon"),
    "train.parallel": ("ddp", "fsdp"),
    "train.on_unhealthy": ("rollback", "stop"),
}
POSITIVE = {
    "model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "model.rope_theta",
    "model.norm_eps", "train.batch_size", "train.grad_accum", "train.max_steps", "train.lr",
    "train.eval_interval", "train.eval_steps", "train.sample_tokens", "checkpoint.keep_last",
    "log.interval",
}  # fmt: skip
NON_NEGATIVE = {
    "model.n_kv_head", "model.vocab_size", "model.mlp_hidden", "train.min_lr",
    "train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.seed",
    "data.num_workers", "lora.rank", "lora.alpha",
    "train.spike_z", "train.max_bad_steps", "train.max_rollbacks",
    "model.logit_softcap", "train.matrix_lr", "train.embedding_lr",
    "train.head_lr", "train.matrix_weight_decay", "train.embedding_weight_decay",
    "train.head_weight_decay", "train.muon_momentum_warmup", "train.sample_interval",
    "checkpoint.interval",
}  # fmt: skip
FRACTIONS = {
    "model.dropout",
    "data.val_fraction",
    "train.decay_fraction",
    "lora.dropout",
}  # in [0, 1)
BETAS = {"train.beta1", "train.beta2", "train.muon_momentum"}  # in [0, 1)
UNIT_FRACTIONS = {"train.rollback_lr"}  # in (0, 1]
MAX_INT = 2**63 - 1  # any whole-number setting: beyond this no file or tensor can follow


# ---------------------------------------------------------------------------------------------
# Loading, saving, overriding


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML config (or a shipped preset by name: `tiny`), apply `--section.key=value`
    overrides, and validate the result."""
    path = Path(path)
    if not path.is_file() and str(path) in presets():  # a name works from any folder
        path = presets()[str(path)]
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file (give a .toml file, or a preset: {', '.join(presets())})"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    cfg = from_dict(raw, origin=str(path))
    origins = apply_overrides(cfg, overrides)
    for where, value, allowed in _faults(cfg):
        # a rule across keys (warmup_steps exceeds max_steps) blames the override that broke it
        blamed = [o for k, o in origins.items() if k != where and k in allowed]
        origin = origins.get(where) or (blamed[0] if blamed else str(path))
        raise ConfigError.field(origin, where, value, allowed)
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


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every setting that differs between two `to_dict` configs."""
    out = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section), after.get(section)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    out.append((f"{section}.{key}", old.get(key), new.get(key)))
        elif old != new:
            out.append((section, old, new))
    return out


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
        raise ConfigError(
            f"{origin}: unknown key {where!r} in {scope}{hint}",
            origin=origin,
            key=where,
            value=value,
        )
    setattr(target, key, _coerce(value, known[key], where, origin))


def _coerce(value: Any, f: dataclasses.Field, where: str, origin: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))

    def bad(allowed: str) -> ConfigError:
        return ConfigError.field(origin, where, value, "must be " + allowed)

    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad("a whole number")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise bad("a finite number")
            return float(value)
        raise bad("a number")
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # --name=123 on the command line
        raise bad("a string")
    if kind == "list[str]":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad('a list of strings, e.g. ["Once upon a time", "def "]')
    raise AssertionError(f"no coercion for field type {kind}")  # our bug


def _did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Validation


def validate(cfg: Config, origin: str = "config") -> Config:
    """Raise on the first fault: right for a command line, where one clear line is the answer."""
    for where, value, allowed in _faults(cfg):
        raise ConfigError.field(origin, where, value, allowed)
    return cfg


def check(cfg: Config) -> dict[str, str]:
    """Every fault, keyed by dotted field name: a form shows each one beside its field."""
    faults: dict[str, str] = {}
    for where, value, allowed in _faults(cfg):
        faults.setdefault(where, f"{value!r} {allowed}")
    return faults


def _faults(cfg: Config) -> Iterable[tuple[str, Any, str]]:
    """(field, value, what is allowed) for each fault: ranges, choices, rules across fields."""
    if (
        not cfg.name
        or any(c in cfg.name for c in "/\\") or cfg.name in (".", "..")
        or any(ord(c) < 32 for c in cfg.name) or len(cfg.name.encode()) > 200
    ):  # fmt: skip
        yield (
            "name",
            cfg.name,
            "must be a plain, non-empty folder name (no slashes or control characters, at most 200 bytes)",
        )
    if not cfg.out_dir or "\0" in cfg.out_dir:
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
            elif where in UNIT_FRACTIONS and not 0 < value <= 1:
                yield where, value, "must be above 0 and at most 1"
            elif isinstance(value, float) and not math.isfinite(value):
                yield where, value, "must be a finite number"
            elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
                yield where, value, f"must be at most {MAX_INT:,} in size"

    m, t, tok = cfg.model, cfg.train, cfg.tokenizer
    bad = [x for x in cfg.lora.targets if x not in LORA_TARGETS]
    if bad or not cfg.lora.targets:
        yield "lora.targets", cfg.lora.targets, f"must name some of {', '.join(LORA_TARGETS)}"
    if cfg.lora.rank and not t.init_from:
        yield "lora.rank", cfg.lora.rank, "needs train.init_from: LoRA adapts a trained model"
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
    if not (t.device in ("auto", "cpu", "cuda", "mps") or _is_cuda_index(t.device)):
        yield "train.device", t.device, "must be auto, cpu, cuda, cuda:N or mps"


# ---------------------------------------------------------------------------------------------
# Rules that scale with the run's length: the engine follows them, the studio shows them


AUTO_INTERVAL_PARTS = 5  # an interval of 0: this many samples (or checkpoints) over the run
WARMUP_CUT = 10  # a warmup longer than the run is cut to this fraction of it (1/10)


@dataclass(frozen=True)
class Adjustment:
    """A setting the run uses at another value than the config holds, and why."""

    key: str
    value: int  # as configured
    used: int
    reason: str


def warmup_steps(t: TrainConfig) -> int:
    """The warmup a run uses: as configured, unless longer than the run itself. Refusing such a
    run would make every short trial of a big preset edit two settings; warming up over the
    whole run would never reach the peak learning rate, so it is cut to a tenth of the run."""
    return t.warmup_steps if t.warmup_steps <= t.max_steps else t.max_steps // WARMUP_CUT


def auto_interval(interval: int, max_steps: int) -> int:
    """An interval of 0 is a fifth of the run, so a 300-step run samples (or saves) every 60
    steps and a 2,500-step one every 500; any other interval is used as it is."""
    return interval or max(1, -(-max_steps // AUTO_INTERVAL_PARTS))


def sample_interval(t: TrainConfig) -> int:
    return auto_interval(t.sample_interval, t.max_steps)


def checkpoint_interval(cfg: Config) -> int:
    return auto_interval(cfg.checkpoint.interval, cfg.train.max_steps)


def adjustments(cfg: Config) -> list[Adjustment]:
    """Where the run will not use a value as written; the engine announces each one (a typed
    `Adjusted` event) and the Config pane shows it, both from here."""
    t, out = cfg.train, []
    if warmup_steps(t) != t.warmup_steps:
        out.append(Adjustment(
            "train.warmup_steps", t.warmup_steps, warmup_steps(t),
            f"longer than the run (train.max_steps = {t.max_steps}); cut to a tenth of the run",
        ))  # fmt: skip
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def auto_device(cuda: bool, mps: bool) -> str:
    """What train.device = "auto" (and `engine.generate --device auto`) picks, given what the
    machine has: a CUDA GPU, then Apple's MPS, then the CPU."""
    if cuda:
        return "cuda"
    if mps:
        return "mps"
    return "cpu"


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()
