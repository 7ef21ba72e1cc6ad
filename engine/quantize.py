"""Weights in fewer bytes for sampling: `--quantize int8` or `int8-dynamic`.

Decoding a few rows reads each weight once per token, so a CPU's token rate is bounded by its
memory bandwidth over the weights' bytes, and int8 weights carry a quarter of fp32's. Both
formats use torch's own int8 kernels, one scale per output row:

- `int8`: weight-only. Activations stay in bf16 (the kernel's fast path), so the only new
  rounding is the weights'; greedy output stays closest to the full-precision model's.
- `int8-dynamic`: activations are quantised to int8 too, per call (fbgemm's dynamic
  quantisation): the fastest on a CPU without bf16 units, at a larger rounding error.

Only for sampling: a quantised model cannot train. bench/bench_generate.py measures the speed
of each and how many greedy tokens stay equal to the fp32 model's.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from engine.contract.errors import UsageError

KINDS = ("none", "int8", "int8-dynamic")


class Int8Linear(nn.Module):
    """nn.Linear with its weight as int8 rows and one bf16 scale per row (symmetric)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", (weight / scale[:, None]).round().to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight,
                                      self.scale)  # fmt: skip
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], -1)


def quantize(model: nn.Module, kind: str) -> nn.Module:
    """The model with its nn.Linear layers replaced, in place, by `kind`'s (a no-op for none)."""
    if kind not in KINDS:
        raise UsageError(f"--quantize {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "none":
        return model
    if next(model.parameters()).device.type != "cpu":
        raise UsageError(f"--quantize {kind} runs on the CPU only; use --device cpu, or drop it")
    model.eval()
    if kind == "int8":
        model.to(torch.bfloat16)  # the norms, embeddings and cache: the kernel takes bf16 in
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
        return model
    return _dynamic(model.float())


def _dynamic(model: nn.Module) -> nn.Module:
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:  # a torch that has moved it all into torchao
        raise UsageError(
            "--quantize int8-dynamic: this torch has no dynamic quantisation; use int8"
        ) from None
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" in engines:
        torch.backends.quantized.engine = "fbgemm"
    elif "x86" not in engines and "onednn" not in engines:
        raise UsageError(
            f"--quantize int8-dynamic: torch has no int8 kernels for this CPU ({engines}); use int8"
        )
    with warnings.catch_warnings():  # torch marks this API as moving to torchao; it still works
        warnings.simplefilter("ignore")
        quantize_dynamic(
            model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    return model
