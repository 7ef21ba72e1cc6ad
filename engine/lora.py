"""LoRA: fine-tune a frozen model through small low-rank adapters on chosen linear layers.

A target layer computes W x + (alpha / r) · B A x, with A (r, in) random and B (out, r) zero, so
training starts from the base model exactly. Only A and B train: the optimizer holds state for
them alone and a checkpoint stores them alone, with a reference to the base it adapts. Loading
such a checkpoint for sampling or export merges them, W + (alpha / r) · B A, into a plain model.

engine.export also writes the adapters alone in PEFT's layout (adapter_config.json and
adapter_model.safetensors), so `PeftModel.from_pretrained` puts them on the exported base.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.contract.config import LORA_TARGETS as TARGETS
from engine.contract.errors import UsageError


class LoRALinear(nn.Linear):
    """An nn.Linear whose weight and bias stay frozen, plus a trainable low-rank update.

    It keeps the base layer's parameter names, so a base state dict loads into it unchanged and
    its adapters are the only new keys (`lora_A`, `lora_B`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT do
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()
        return super().forward(x) + self.scale * update


def apply(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> int:
    """Freeze `model` and put adapters on every block's `targets`; returns how many layers got
    one. A target no block has (mlp.fc in a SwiGLU model) is skipped; none at all is an error."""
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for block in model.blocks:  # type: ignore[attr-defined]
        for target in targets:
            parent_name, _, leaf = target.rpartition(".")
            parent = block.get_submodule(parent_name)
            layer = getattr(parent, leaf, None)
            if isinstance(layer, nn.Linear) and not isinstance(layer, LoRALinear):
                setattr(parent, leaf, LoRALinear(layer, rank, alpha, dropout))
                n += 1
    if not n:
        raise UsageError(
            f"lora.targets = {targets!r} names no layer of this model; choose from "
            + ", ".join(TARGETS)
        )
    return n


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a model's state dict: what a LoRA checkpoint stores."""
    return {k: v for k, v in state.items() if ".lora_" in k}


def merge(
    base: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """A plain state dict computing what base + adapters compute: W + scale · B A per layer."""
    merged = dict(base)
    for key, a in adapters.items():
        if not key.endswith(".lora_A"):
            continue
        layer = key.removesuffix(".lora_A")
        b = adapters[f"{layer}.lora_B"]
        w = base[f"{layer}.weight"]
        merged[f"{layer}.weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return merged


def merged(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A whole adapted model's state dict (base and adapters) as a plain model's."""
    adapters = adapter_state(state)
    return merge({k: v for k, v in state.items() if k not in adapters}, adapters, scale)


def scale_in(model: nn.Module) -> float | None:
    """The adapters' alpha / rank in `model`, or None when it has none."""
    return next((m.scale for m in model.modules() if isinstance(m, LoRALinear)), None)


def scale_of(settings: dict[str, Any]) -> float:
    return float(settings["alpha"]) / int(settings["rank"])
