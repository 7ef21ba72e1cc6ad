"""Where and in what precision a run computes, and what the hardware can do at best (for MFU)."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from dataclasses import dataclass

import torch

from engine import precision
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
    why: str = ""  # how "auto" chose, for the start of the run's log
    matmul: str = "highest"  # torch's float32 matmul precision (train.matmul_precision)

    @property
    def compute(self) -> contextlib.AbstractContextManager:
        """The context every forward pass runs in: autocast, and the attention kernel that
        suits the matmul precision (engine.precision.compute_context)."""
        return precision.compute_context(self.device, self.dtype, self.matmul)

    @property
    def precision(self) -> str:
        """The precision as the start line names it, e.g. "float32 with bf16 matmuls"."""
        dtype = str(self.dtype).removeprefix("torch.")
        return precision.describe(dtype, self.matmul, self.device.type)

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


def pick(
    device: str = "auto",
    dtype: str = "auto",
    calibrate: precision.Calibration | None = None,
    matmul: str = "auto",
) -> Runtime:
    """Resolve train.device, train.dtype and train.matmul_precision against this machine.

    On a CPU, `auto` asks engine.precision, which reads the matrix units and, where they exist,
    runs `calibrate` (a timing at the model's shapes) to decide. On a GPU, bf16 autocast (fp16
    where bf16 is missing) with TF32 for the fp32 products that remain.
    """
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
    why = ""
    if dev.type == "cpu" and "auto" in (dtype, matmul):
        choice = precision.for_training(precision.cpu_features(), calibrate, dtype, matmul)
        dtype, matmul = choice.dtype, choice.matmul
        why = choice.line("training") if choice.reason else ""
    if dtype == "auto":
        if dev.type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if matmul == "auto":
        matmul = "high" if dev.type == "cuda" else "highest"
    return Runtime(dev, getattr(torch, dtype), why, matmul)


def memory_bytes(where: torch.device) -> int | None:
    """How much memory training on `where` may use: a GPU's total, else the machine's RAM
    (None where it cannot be told)."""
    try:
        if where.type == "cuda":
            return torch.cuda.get_device_properties(where).total_memory
        if where.type == "mps":
            return int(torch.mps.recommended_max_memory())
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
