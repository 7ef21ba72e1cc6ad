"""Hugging Face model directories in: OpenAI GPT-2 and Llama layouts mapped onto our GPT.

`load("path/to/dir")` reads config.json, the weights (model.safetensors or pytorch_model.bin,
sharded or not) and the tokenizer files, and returns the same kind of dict a checkpoint holds,
so `python -m engine.generate hf:PATH` and `train.init_from = "hf:PATH"` need no special path.

The name tables below serve both directions: engine.export writes Hugging Face directories
with them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from engine.contract.config import ModelConfig
from engine.contract.errors import UsageError
from engine.model import GPT
from engine.tokenizer import EOT, BPETokenizer

LAYOUTS = ("gpt2", "llama", "qwen3")  # Qwen3 is Llama with QK-norm and no MLP bias

# (ours, theirs, transposed) inside block i. GPT-2 keeps its matrices as Conv1D, (in, out): the
# transpose of nn.Linear's (out, in). Its c_attn is already q, k and v side by side, like ours.
_GPT2_BLOCK = [
    ("norm1.weight", "ln_1.weight", False),
    ("norm1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("norm2.weight", "ln_2.weight", False),
    ("norm2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
# Llama keeps q, k and v apart: our one qkv matrix is their three stacked (see `_llama_pairs`).
_LLAMA_BLOCK = [
    ("norm1.weight", "input_layernorm.weight"),
    ("attn.proj.{}", "self_attn.o_proj.{}"),
    ("norm2.weight", "post_attention_layernorm.weight"),
    ("mlp.gate.{}", "mlp.gate_proj.{}"),
    ("mlp.up.{}", "mlp.up_proj.{}"),
    ("mlp.proj.{}", "mlp.down_proj.{}"),
]

Pair = tuple[str, tuple[str, ...], bool]  # ours, theirs (several are stacked), transposed


def pairs(layout: str, cfg: ModelConfig) -> list[Pair]:
    """Every weight of our model with the Hugging Face name(s) it has in `layout`."""
    if layout == "gpt2":
        out = [
            ("wte.weight", ("transformer.wte.weight",), False),
            ("wpe.weight", ("transformer.wpe.weight",), False),
            ("norm_f.weight", ("transformer.ln_f.weight",), False),
            ("norm_f.bias", ("transformer.ln_f.bias",), False),
        ]
        for i in range(cfg.n_layer):
            out += [
                (f"blocks.{i}.{ours}", (f"transformer.h.{i}.{theirs}",), t)
                for ours, theirs, t in _GPT2_BLOCK
            ]
    else:
        out = [
            ("wte.weight", ("model.embed_tokens.weight",), False),
            ("norm_f.weight", ("model.norm.weight",), False),
        ]
        kinds = ("weight", "bias") if cfg.bias else ("weight",)
        for i in range(cfg.n_layer):
            at = f"model.layers.{i}.self_attn"
            for kind in kinds:
                qkv = tuple(f"{at}.{p}_proj.{kind}" for p in "qkv")
                out.append((f"blocks.{i}.attn.qkv.{kind}", qkv, False))
            if layout == "qwen3":
                for p in "qk":
                    out.append(
                        (f"blocks.{i}.attn.{p}_norm.weight", (f"{at}.{p}_norm.weight",), False)
                    )
            for ours, theirs in _LLAMA_BLOCK:
                for kind in kinds if "{}" in ours else ("weight",):
                    out.append(
                        (
                            f"blocks.{i}.{ours.format(kind)}",
                            (f"model.layers.{i}.{theirs.format(kind)}",),
                            False,
                        )
                    )
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", ("lm_head.weight",), False))
    return out


def to_ours(
    layout: str, cfg: ModelConfig, theirs: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face one; a missing weight is named in the error."""
    ours: dict[str, torch.Tensor] = {}
    for name, names, transposed in pairs(layout, cfg):
        missing = next((n for n in names if n not in theirs), None)
        if missing is not None:
            raise UsageError(f"{where}: weight {missing!r} is missing; is the file complete?")
        tensor = torch.cat([theirs[n] for n in names]) if len(names) > 1 else theirs[names[0]]
        ours[name] = (tensor.t() if transposed else tensor).float().contiguous()
    if cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["wte.weight"]
    return ours


def to_theirs(
    layout: str, cfg: ModelConfig, ours: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from ours (tied output weights are left to the loader)."""
    theirs: dict[str, torch.Tensor] = {}
    for name, names, transposed in pairs(layout, cfg):
        tensor = ours.get(name)
        if tensor is None:
            # GPT-2 has biases everywhere and every format has norm gains: zeros and ones
            # compute what a model without them computes
            width = _width(name, cfg)
            tensor = torch.zeros(width) if name.endswith(".bias") else torch.ones(width)
        tensor = tensor.t() if transposed else tensor
        if len(names) > 1:  # q, k, v
            q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
            parts = tensor.split([q, kv, kv])
        else:
            parts = (tensor,)
        for n, part in zip(names, parts, strict=True):
            theirs[n] = part.contiguous().clone()  # safetensors refuses shared storage
    return theirs


def _width(name: str, cfg: ModelConfig) -> int:
    """The size of a bias or norm gain our model may lack, from its name."""
    if "_norm." in name:
        return cfg.head_dim  # QK-norm works per head
    if "norm" in name:
        return cfg.n_embd
    if ".qkv." in name:
        return (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    if ".fc." in name:
        return cfg.hidden_dim
    return cfg.n_embd  # the output projections


# ---------------------------------------------------------------------------------------------
# Reading a directory


def load(path: str | Path) -> dict[str, Any]:
    """Weights, model config and tokenizer of a Hugging Face GPT-2, Llama or Qwen3 directory."""
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"hf:{path}: not a directory; give a Hugging Face model folder")
    hf_config = read_config(d)
    layout = hf_config.get("model_type")
    if layout not in LAYOUTS:
        raise UsageError(
            f"hf:{path}: model_type {layout!r} in config.json is not supported; "
            f"gpt-studio imports {' and '.join(LAYOUTS)}"
        )
    cfg = model_config(layout, hf_config, f"hf:{path}/config.json")
    weights = to_ours(layout, cfg, _read_tensors(d, layout), f"hf:{path}")
    _check_shapes(cfg, weights, f"hf:{path}")
    tokenizer = read_tokenizer(d)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(
            f"hf:{path}: the tokenizer has {tokenizer.vocab_size} ids but the model embeds "
            f"only {cfg.vocab_size}; they do not belong together"
        )
    return {
        "model": weights,
        "config": {"model": asdict(cfg)},
        "tokenizer": tokenizer.spec(),
        "step": 0,
        "source": f"hf:{path}",
    }


def read_config(d: Path) -> dict[str, Any]:
    path = d / "config.json"
    if not path.is_file():
        raise UsageError(f"hf:{d}: no config.json; give a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"hf:{path}: not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise UsageError(f"hf:{path}: not a JSON object")
    return config


def model_config(layout: str, c: dict[str, Any], where: str) -> ModelConfig:
    """Our ModelConfig for a Hugging Face config; math we do not do is refused by name."""

    def need(key: str) -> Any:
        value = c.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{where}: {key!r} must be a positive whole number, got {value!r}")
        return value

    def refuse(key: str, value: Any, wanted: str) -> None:
        raise UsageError(f"{where}: {key} = {value!r} is not supported; gpt-studio needs {wanted}")

    if layout == "gpt2":
        act = c.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            refuse("activation_function", act, "'gelu_new' (GELU, tanh form) or 'gelu' (exact)")
        if c.get("scale_attn_by_inverse_layer_idx", False):
            refuse("scale_attn_by_inverse_layer_idx", True, "false")
        if not c.get("scale_attn_weights", True):
            refuse("scale_attn_weights", False, "true")
        n_embd = need("n_embd")
        return ModelConfig(
            n_layer=need("n_layer"),
            n_head=need("n_head"),
            n_embd=n_embd,
            block_size=need("n_positions"),
            vocab_size=need("vocab_size"),
            bias=True,
            pos="learned",
            norm="layernorm",
            norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
            mlp="gelu_exact" if act == "gelu" else "gelu",
            mlp_hidden=c.get("n_inner") or 4 * n_embd,
            tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        )
    if c.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", c["hidden_act"], "'silu' (SwiGLU)")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        refuse("rope type", rope_type, "'default' (no RoPE scaling)")
    if layout == "llama" and c.get("attention_bias", False) != c.get("mlp_bias", False):
        refuse("attention_bias", c.get("attention_bias"), "the same value as mlp_bias")
    if layout == "qwen3" and c.get("attention_bias", False):
        refuse("attention_bias", True, "false (Qwen3's MLP has no biases to match)")
    hidden, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = c.get("head_dim") or hidden // heads
    if hidden % heads or head_dim != hidden // heads:
        refuse("head_dim", head_dim, f"hidden_size / num_attention_heads = {hidden / heads:g}")
    kv = c.get("num_key_value_heads") or heads
    return ModelConfig(
        n_layer=need("num_hidden_layers"),
        n_head=heads,
        n_embd=hidden,
        n_kv_head=0 if kv == heads else kv,
        block_size=need("max_position_embeddings"),
        vocab_size=need("vocab_size"),
        bias=bool(c.get("attention_bias", False)),
        pos="rope",
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        norm="rmsnorm",
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        mlp_hidden=need("intermediate_size"),
        qk_norm=layout == "qwen3",
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def _read_tensors(d: Path, layout: str) -> dict[str, torch.Tensor]:
    """Every tensor in the folder's weight files, whichever of the four usual shapes they take."""
    files: list[Path] = []
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (d / single).is_file():
            files = [d / single]
        elif (d / index).is_file():
            try:
                shards = json.loads((d / index).read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise UsageError(f"hf:{d / index}: not a weight index ({err})") from None
            files = [d / name for name in sorted(set(shards.values()))]
        if files:
            break
    else:
        raise UsageError(f"hf:{d}: no weights; expected model.safetensors or pytorch_model.bin")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(_read_file(f))
    # a bare GPT2Model or LlamaModel saves its weights without the causal-LM prefix
    prefix = "transformer." if layout == "gpt2" else "model."
    return {k if k.startswith((prefix, "lm_head.")) else prefix + k: v for k, v in tensors.items()}


def _read_file(f: Path) -> dict[str, torch.Tensor]:
    if not f.is_file():
        raise UsageError(f"hf:{f}: weight file is missing")
    try:
        if f.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise UsageError(
                    f"hf:{f}: reading safetensors needs the safetensors package "
                    "(pip install safetensors)"
                ) from None
            return load_file(f)
        return torch.load(f, map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except Exception as err:  # safetensors and torch raise several types for a bad file
        raise UsageError(f"hf:{f}: not a readable weight file ({err})") from None


def _check_shapes(cfg: ModelConfig, weights: dict[str, torch.Tensor], where: str) -> None:
    with torch.device("meta"):
        expected = GPT(cfg).state_dict()
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise UsageError(
                f"{where}: weight for {name} has shape {tuple(weights[name].shape)}, but "
                f"config.json implies {tuple(tensor.shape)}"
            )


def read_tokenizer(d: Path) -> BPETokenizer:
    """tokenizer.json if present, else GPT-2's vocab.json + merges.txt, as our BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if (d / "tokenizer.json").is_file():
        try:
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        except Exception as err:  # tokenizers raises a bare Exception for any parse failure
            raise UsageError(f"hf:{d}/tokenizer.json: not a tokenizers JSON ({err})") from None
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        try:
            tok = Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
        except Exception as err:
            raise UsageError(f"hf:{d}: vocab.json and merges.txt do not load ({err})") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if tok.token_to_id(EOT) is not None:
            tok.add_special_tokens([EOT])
    else:
        raise UsageError(
            f"hf:{d}: no tokenizer; expected tokenizer.json, or vocab.json and merges.txt"
        )
    if tok.token_to_id(EOT) is None:
        raise UsageError(
            f"hf:{d}: the tokenizer has no {EOT!r} token, which gpt-studio uses to separate "
            "documents; only tokenizers with one can be imported"
        )
    return BPETokenizer(tok)
