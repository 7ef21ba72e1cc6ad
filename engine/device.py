"""Where and in what precision a run computes, and what the hardware can do at best (for MFU)."""

from __future__ import annotations

import contextlib
import resource
import sys
from dataclasses import dataclass

import torch

from engine.contract.config import auto_device
from engine.contract.errors import UsageError

# Dense bf16/fp16 tensor-core peaks in FLOP/s, by a substring of the device name: the
# denominator of MFU. A device not listed reports MFU as unknown rather than a guess.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # the autocast dtype; float32 means no autocast

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and does not."""
        return self.dtype == torch.float16

    @property
    def peak_flops(self) -> float | None:
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)

    def memory_gb(self) -> float:
        """Peak GPU memory allocated on CUDA; the process's peak resident memory elsewhere."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 1e9
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes vs KiB


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def auto() -> str:
    """What `auto` means on this machine: the rule is engine.contract.config.auto_device."""
    return auto_device(torch.cuda.is_available(), mps_available())


def pick(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Resolve train.device and train.dtype against what this machine has."""
    if device == "auto":
        device = auto()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"train.device = {device!r}, but no CUDA GPU is visible; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(
            f"train.device = {device!r}, but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"train.device = {device!r}, but Apple MPS is not available here")
    if dtype == "auto":
        # CPUs without bf16 matrix units run a bf16 matmul ~100x slower than fp32: never default
        if dev.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    return Runtime(dev, getattr(torch, dtype))


def configure_cuda() -> None:
    """TF32 for the fp32 matmuls that remain under autocast: same speed-up nanoGPT takes."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
