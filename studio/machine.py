"""What the studio knows of this machine without importing torch: how much memory a run may
use, and where the studio keeps what it remembers between sessions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def state_dir() -> Path:
    """$XDG_CONFIG_HOME/gpt-studio (~/.config/gpt-studio): the studio's own files."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpt-studio"


def last_config_path() -> Path:
    return state_dir() / "last.toml"


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_bytes() -> int | None:
    """The first CUDA GPU's memory, from nvidia-smi (None where there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return int(out.stdout.split()[0]) << 20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_memory(device: str) -> tuple[int | None, str]:
    """The memory a run on `device` has, and what it is called: GPU memory, or RAM."""
    if device.startswith("cuda") or device == "auto":
        gpu = gpu_bytes()
        if gpu is not None:
            return gpu, "GPU memory"
    return ram_bytes(), "RAM"
