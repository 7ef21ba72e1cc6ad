"""Export a checkpoint as a Hugging Face model directory that transformers loads as it is.

A learned-position, LayerNorm, GELU model becomes GPT-2 (`GPT2LMHeadModel`); a rotary,
RMSNorm, SwiGLU model becomes Llama (`LlamaForCausalLM`). Any other mix has no Hugging Face
class that computes the same function, so it is refused with the switch that prevents it.

The directory holds config.json, model.safetensors, tokenizer.json and tokenizer_config.json,
so `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` work
without gpt-studio. Embedding rows beyond the tokenizer's vocabulary (our padding to a multiple
of 64) are dropped: an exported model can only produce ids its tokenizer can decode.

    python -m engine.export RUN_DIR|CHECKPOINT|hf:PATH OUT_DIR [--force]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from engine import checkpoint, hf
from engine.chat_template import END, JINJA, SPECIALS, ChatTokenizer
from engine.contract.config import ModelConfig
from engine.contract.errors import UsageError
from engine.tokenizer import EOT, BPETokenizer, CharTokenizer, TiktokenTokenizer, Tokenizer
from engine.tokenizer import from_spec as tokenizer_from_spec

# The switches each format fixes; `layout` names the first one a model gets wrong.
FORMATS = {
    "gpt2": ("GPT-2", {"pos": "learned", "norm": "layernorm", "mlp": "gelu"}),
    "llama": ("Llama", {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"}),
}
# model.mlp -> GPT-2's activation_function: the tanh form ("gelu_new") or the exact erf ("gelu")
GPT2_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu"}
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


# Switches no format we write holds, each with why; a model that uses one is refused by name.
NO_FORMAT = {
    "logit_softcap": "no Llama- or Qwen3-style model caps its logits",
    "mlp": "no Llama- or Qwen3-style model has a plain (not gated) ReLU² MLP",
}


def layout(cfg: ModelConfig) -> str:
    """The Hugging Face format ("gpt2", "llama" or "qwen3") that computes exactly what this model
    does. Parameter-free norms export as gains of one; zero-initialised projections are only a
    starting point, so neither limits the format."""
    if cfg.logit_softcap > 0:
        raise UsageError(
            f"cannot export: model.logit_softcap = {cfg.logit_softcap:g}: "
            f"{NO_FORMAT['logit_softcap']}; train with model.logit_softcap = 0 to export"
        )
    if cfg.mlp == "relu2":
        raise UsageError(
            f"cannot export: model.mlp = 'relu2': {NO_FORMAT['mlp']}; "
            "train with model.mlp = 'swiglu' (or 'gelu' for GPT-2) to export"
        )
    chosen = "gpt2" if cfg.pos == "learned" else "llama"
    other = "llama" if chosen == "gpt2" else "gpt2"
    name, wants = FORMATS[chosen]
    other_name, other_wants = FORMATS[other]
    for key, wanted in wants.items():
        value = getattr(cfg, key)
        if key == "mlp" and value in GPT2_ACTIVATIONS and wanted == "gelu":
            continue  # GPT-2's config names its GELU form
        if value != wanted:
            needs = " and ".join(f"model.{k} = {v!r}" for k, v in other_wants.items() if k != key)
            raise UsageError(
                f"cannot export: model.{key} = {value!r} needs {needs} to export as "
                f"{other_name}; with model.pos = {cfg.pos!r} the format is {name}, which needs "
                f"model.{key} = {wanted!r}"
            )
    if chosen == "gpt2" and cfg.kv_heads != cfg.n_head:
        raise UsageError(
            f"cannot export: model.n_kv_head = {cfg.n_kv_head} (grouped-query attention) needs "
            "the Llama format (model.pos = 'rope', model.norm = 'rmsnorm', model.mlp = 'swiglu'); "
            "GPT-2 has a key/value head for every query head"
        )
    if cfg.qk_norm:
        if chosen == "gpt2":
            raise UsageError(
                "cannot export: model.qk_norm = true needs the Qwen3 format (model.pos = 'rope', "
                "model.norm = 'rmsnorm', model.mlp = 'swiglu'); GPT-2 has no QK-norm"
            )
        if cfg.bias:
            raise UsageError(
                "cannot export: model.qk_norm = true with model.bias = true: Qwen3, the format "
                "with QK-norm, has no MLP biases; train with model.bias = false to export"
            )
        return "qwen3"
    return chosen


def hf_config(cfg: ModelConfig, vocab_size: int, eot_id: int | None) -> dict[str, Any]:
    """config.json for the model's format; `vocab_size` is the number of rows exported."""
    common = {"vocab_size": vocab_size, "bos_token_id": eot_id, "eos_token_id": eot_id}
    common |= {"tie_word_embeddings": cfg.tie_embeddings, "dtype": "float32", "use_cache": True}
    if layout(cfg) == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_embd": cfg.n_embd,
            "n_inner": cfg.hidden_dim,
            "n_positions": cfg.block_size,
            "activation_function": GPT2_ACTIVATIONS[cfg.mlp],
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            **common,
        }
    chosen = layout(cfg)
    return {
        "architectures": ["Qwen3ForCausalLM" if chosen == "qwen3" else "LlamaForCausalLM"],
        "model_type": chosen,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_size": cfg.n_embd,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.block_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": 0.0,
        **common,
    }


def hf_weights(
    cfg: ModelConfig, weights: dict[str, torch.Tensor], vocab_size: int
) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict, the vocabulary cut to `vocab_size` rows."""
    cut = dict(weights)
    for name in ("wte.weight", "lm_head.weight"):
        cut[name] = weights[name][:vocab_size]
    return hf.to_theirs(layout(cfg), cfg, cut)


def write_model(
    out_dir: Path,
    cfg: ModelConfig,
    weights: dict[str, torch.Tensor],
    vocab_size: int,
    eot_id: int | None = None,
) -> str:
    """config.json and model.safetensors into `out_dir`; returns the format written."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UsageError("export needs the safetensors package (pip install safetensors)") from None
    fmt = layout(cfg)
    tensors = hf_weights(cfg, weights, vocab_size)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(cfg, vocab_size, eot_id)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return fmt


# ---------------------------------------------------------------------------------------------
# Tokenizers


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """Our tokenizer as a Hugging Face tokenizers JSON that encodes and decodes the same ids."""
    if isinstance(tokenizer, ChatTokenizer):
        return _chat_json(tokenizer)
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.spec()["json"]
    if isinstance(tokenizer, CharTokenizer):
        return _char_json(tokenizer)
    if isinstance(tokenizer, TiktokenTokenizer):
        return _tiktoken_json(tokenizer)
    raise UsageError(f"cannot export a {type(tokenizer).__name__}; no Hugging Face form is known")


def _chat_json(tokenizer: ChatTokenizer) -> str:
    """The base tokenizer's JSON with the chat tags as added special tokens, at our ids."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(tokenizer_json(tokenizer.base))
    if tok.get_vocab_size(with_added_tokens=True) != tokenizer.base.vocab_size:  # our bug
        raise UsageError("cannot export: the base tokenizer's ids are not dense")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    for text, i in tokenizer.special_ids.items():
        assert tok.token_to_id(text) == i, "chat tokens must keep their ids"
    return tok.to_str()


def _char_json(tokenizer: CharTokenizer) -> str:
    """A BPE with no merges over one string: every character becomes its own id, and a
    character outside the vocabulary is dropped (ours refuses it)."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    chars = tokenizer.spec()["chars"]
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.decoder = decoders.Fuse()  # join pieces as they are, without spaces between them
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok.to_str()


def _tiktoken_json(tokenizer: TiktokenTokenizer) -> str:
    """A tiktoken encoding as byte-level BPE: its ranks are the vocabulary, and each token's
    merge is recovered as the split whose halves are both tokens, ranked by the whole."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    enc = tokenizer._enc
    ranks: dict[bytes, int] = enc._mergeable_ranks
    text = _byte_level_text
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    vocab = {text(token): rank for token, rank in ranks.items()}
    specials = enc._special_tokens
    vocab |= specials
    # tokenizers numbers ids densely, tiktoken does not (cl100k has no 100256): fill the holes
    # with pieces byte-level text can never form, since a space is never a byte-level character
    taken = set(vocab.values())
    vocab |= {f"<unused {i}>": i for i in range(max(taken)) if i not in taken}
    model = models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], ignore_merges=True)
    tok = HFTokenizer(model)
    # Said in Oniguruma, the regex engine of tokenizers: tiktoken's possessive quantifiers
    # (`++`, `{1,3}+`) would mean "repeat again", where plain greedy ones split these patterns
    # the same way; and `$` would match before every newline, where tiktoken means `\z`.
    pattern = re.sub(r"(?<!\\)([?*+}])\+", r"\1", enc._pat_str)
    pattern = re.sub(r"(?<!\\)\$", r"\\z", pattern)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # only end-of-text is special, as in our encoder; the others stay plain, unreachable ids
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok.to_str()


def _byte_level_text(data: bytes) -> str:
    """Bytes as byte-level BPE writes them: printable bytes as themselves, the other 68 shifted
    past 255 so that every byte is one visible character (GPT-2's table)."""
    return "".join(_BYTE_CHARS[b] for b in data)


_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
_BYTE_CHARS = {b: chr(b) for b in _PRINTABLE} | {
    b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in _PRINTABLE)
}


def tokenizer_config(block_size: int, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """tokenizer_config.json; a chat tokenizer also brings its template, and ends a turn
    (generation's eos) at `<|end|>`."""
    out = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
    }
    if isinstance(tokenizer, ChatTokenizer):
        out |= {"chat_template": JINJA, "eos_token": END, "pad_token": EOT}
    return out


def write_tokenizer(out_dir: Path, tokenizer: Tokenizer, block_size: int) -> None:
    """tokenizer.json and tokenizer_config.json: what `AutoTokenizer.from_pretrained` reads."""
    (out_dir / "tokenizer.json").write_text(tokenizer_json(tokenizer), encoding="utf-8")
    config = json.dumps(tokenizer_config(block_size, tokenizer), indent=2)
    (out_dir / "tokenizer_config.json").write_text(config + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The whole directory


def export(source: str | Path, out_dir: str | Path, *, force: bool = False) -> str:
    """Write the model at `source` (anything `checkpoint.load_weights` takes) as a Hugging Face
    directory; returns the format. A folder that holds anything is refused unless `force`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out}: folder is not empty; choose another or pass --force")
    state = checkpoint.load_weights(source)
    cfg = checkpoint.model_config(state)
    layout(cfg)  # refuse before writing anything
    tokenizer = tokenizer_from_spec(state["tokenizer"])
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UsageError(
            f"{source}: its tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{cfg.vocab_size}"
        )
    tokenizer_json(tokenizer)  # refuse before writing anything
    out.mkdir(parents=True, exist_ok=True)
    fmt = write_model(out, cfg, state["model"], tokenizer.vocab_size, tokenizer.eot_id)
    write_tokenizer(out, tokenizer, cfg.block_size)
    return fmt


def export_adapter(source: str | Path, out_dir: str | Path, *, force: bool = False) -> None:
    """A LoRA run's adapters alone in PEFT's layout, for the base exported from its init_from."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out}: folder is not empty; choose another or pass --force")
    path = checkpoint.resolve(source)
    state = checkpoint.load(path)
    if not isinstance(state.get("lora"), dict):
        raise UsageError(f"{path}: not a LoRA run's checkpoint; export the whole model instead")
    state["source"] = str(path)
    cfg = checkpoint.model_config(state)
    base = checkpoint.load_weights(state["lora"]["base"])
    if checkpoint.model_config(base).vocab_size < cfg.vocab_size:
        raise UsageError(
            f"{path}: the run added tokens (the chat template) that its base lacks, so PEFT "
            "adapters cannot carry them; export the merged model without --adapter"
        )
    layout(cfg)
    write_peft(out, cfg, state["model"], state["lora"])


# ---------------------------------------------------------------------------------------------
# PEFT's adapter layout


def write_peft(out: Path, cfg: Any, adapters: dict[str, torch.Tensor], settings: dict) -> None:
    """adapter_config.json and adapter_model.safetensors for the model exported by
    engine.export (GPT-2 or Llama layout): loadable with `PeftModel.from_pretrained`."""
    from safetensors.torch import save_file

    fmt = layout(cfg)
    names = {ours.removesuffix(".weight"): theirs for ours, theirs, _ in hf.pairs(fmt, cfg)}
    tensors: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for key, a in adapters.items():
        if not key.endswith(".lora_A"):
            continue
        layer = key.removesuffix(".lora_A")
        b = adapters[f"{layer}.lora_B"]
        theirs = [n.removesuffix(".weight") for n in names[layer]]
        # Llama's q, k and v are apart: each gets the shared A and its rows of B, exactly ours
        parts = b.split([q, kv, kv]) if len(theirs) > 1 else (b,)
        for name, part in zip(theirs, parts, strict=True):
            prefix = f"base_model.model.{name}"
            tensors[f"{prefix}.lora_A.weight"] = a.detach().float().contiguous().clone()
            tensors[f"{prefix}.lora_B.weight"] = part.detach().float().contiguous().clone()
            modules.add(name.rsplit(".", 1)[-1])
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(settings["rank"]),
        "lora_alpha": float(settings["alpha"]),
        "lora_dropout": float(settings["dropout"]),
        "target_modules": sorted(modules),
        "fan_in_fan_out": fmt == "gpt2",  # GPT-2 keeps its matrices as Conv1D, (in, out)
        "bias": "none",
        "inference_mode": True,
        "base_model_name_or_path": str(settings.get("base", "")),
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
