"""Which precision a CPU should compute in, chosen by what this machine has and measures.

CPUs differ by two orders of magnitude in bf16: one with AMX tiles or AVX-512 bf16 instructions
multiplies bf16 matrices several times faster than fp32, while one with AVX2 only emulates bf16
and is far slower. Even with the units, bf16 autocast can lose on a small model, whose step is
dominated by per-op costs that the extra casts add to. Between the two lies fp32 with bf16
matrix products (torch's float32 matmul precision "medium", the CPU's counterpart of a GPU's
TF32): every tensor stays fp32 and only the products round their inputs to bf16, summing in
fp32, so a small model gets the units' speed without a single cast of its own.

So `dtype = "auto"` and `matmul_precision = "auto"` on a CPU read the matrix units first, decide
outright where the answer is clear, and otherwise time a short calibration at the model's own
shapes. Every choice carries the reason the start line shows.

The decisions are pure functions of `CpuFeatures` and the calibration's timings, so they can be
tested on a machine of any kind by faking both.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.contract.render import precision as describe

# A calibration result counts only when it wins by this much: below it, timing noise on a busy
# machine decides, and fp32 is the precision that loses nothing.
MARGIN = 1.15
# Weights smaller than this stay in the CPU's caches between tokens, so decoding them is not
# bound by memory and smaller formats would only add conversions.
CACHE_RESIDENT_BYTES = 32 * 2**20


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers for bf16 matrix work."""

    amx_bf16: bool = False  # Intel AMX tiles (Sapphire Rapids and later)
    avx512_bf16: bool = False  # bf16 dot products in AVX-512 (Cooper Lake, Zen 4 and later)
    capability: str = "DEFAULT"  # torch's own word for the kernels it dispatches to
    name: str = "unknown CPU"

    @property
    def units(self) -> str:
        """ "amx", "avx512_bf16" or "none": the best bf16 matrix hardware present."""
        if self.amx_bf16:
            return "amx"
        return "avx512_bf16" if self.avx512_bf16 else "none"

    def describe(self) -> str:
        units = {"amx": "AMX bf16", "avx512_bf16": "AVX-512 bf16", "none": "no bf16 units"}
        return f"{self.name} ({units[self.units]}, torch kernels {self.capability})"


def cpu_features(cpuinfo: str | None = None) -> CpuFeatures:
    """This machine's features, from /proc/cpuinfo (or the given text) and torch's dispatch."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: only torch's word is known
            cpuinfo = ""
    flags: set[str] = set()
    name = "unknown CPU"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and name == "unknown CPU":
            name = value.strip()
    capability = torch.backends.cpu.get_cpu_capability()
    return CpuFeatures(
        amx_bf16="amx_bf16" in flags or capability.startswith("AMX"),
        avx512_bf16="avx512_bf16" in flags,
        capability=capability,
        name=name,
    )


@dataclass(frozen=True)
class Choice:
    dtype: str  # the autocast dtype: "float32" (none) or "bfloat16"
    matmul: str = "highest"  # torch's float32 matmul precision: "medium" multiplies in bf16
    reason: str = ""  # empty when nothing was chosen: the config gave both

    @property
    def name(self) -> str:
        return describe(self.dtype, self.matmul)

    def line(self, job: str) -> str:
        return f"precision for {job}: {self.name} ({self.reason})"


# The precisions a training calibration may time: (autocast dtype, float32 matmul precision)
FP32 = ("float32", "highest")
BF16_MATMULS = ("float32", "medium")
BF16 = ("bfloat16", "highest")
Mode = tuple[str, str]

# A calibration returns seconds for each precision it timed. Generation's are keyed by dtype
# ({"float32": .., "bfloat16": ..}); training's by Mode, given the modes to time.
Calibration = Callable[..., dict]


def _by_timing(timings: dict[str, float], what: str) -> Choice:
    fp32, bf16 = timings["float32"], timings["bfloat16"]
    ratio = fp32 / bf16
    measured = f"{what}: bf16 {ratio:.2f}x fp32's speed"
    if ratio >= MARGIN:
        return Choice("bfloat16", reason=measured)
    return Choice("float32", reason=f"{measured}, under the {MARGIN:g}x that would pay for it")


def for_training(
    features: CpuFeatures,
    calibrate: Calibration | None = None,
    dtype: str = "auto",
    matmul: str = "auto",
) -> Choice:
    """The autocast dtype and float32 matmul precision for training on this CPU, resolving
    whichever of the two is "auto" (an explicit one is kept and only the other is chosen).

    Without bf16 units the answer is full fp32, no timing needed. With them it depends on the
    model: a wide model's matmuls dominate and bf16 autocast wins; a small one's step is
    per-op overhead, which autocast's casts add to, while bf16 matmuls add no casts. So the
    calibration times the candidates and the fastest is taken if it beats full fp32 by
    MARGIN; without a calibration, full fp32 is the safe answer.
    """
    candidates = [
        m
        for m in (FP32, BF16_MATMULS, BF16)
        if dtype in ("auto", m[0]) and matmul in ("auto", m[1])
    ]
    if len(candidates) <= 1:  # both given (or float16, which a CPU never picks): nothing to choose
        dtype, matmul = candidates[0] if candidates else (dtype, matmul)
        return Choice(dtype, "highest" if matmul == "auto" else matmul)
    base = candidates[0]  # full fp32 where it is a candidate: the precision that loses nothing
    if features.units == "none":
        return Choice(*base, reason="this CPU has no bf16 matrix units, so bf16 would be emulated")
    if calibrate is None:
        return Choice(*base, reason=f"{features.units} present but not calibrated for this model")
    timings: dict[Mode, float] = calibrate(candidates)
    best = min(candidates, key=lambda m: timings[m])
    speeds = ", ".join(
        f"{describe(*m)} {timings[base] / timings[m]:.2f}x" for m in candidates if m != base
    )
    measured = f"{features.units}, measured on one block's training step: {speeds} {describe(*base)}'s speed"
    if best != base and timings[base] / timings[best] >= MARGIN:
        return Choice(*best, reason=measured)
    return Choice(*base, reason=f"{measured}, under the {MARGIN:g}x that would pay for a change")


def for_generation(
    features: CpuFeatures, calibrate: Calibration | None = None, weight_bytes: int | None = None
) -> Choice:
    """The dtype to keep weights in for sampling on this CPU.

    Decoding a few rows reads every weight once per token, so half-size weights halve the
    time where the arithmetic keeps up: with bf16 units it does, and bf16 is chosen outright.
    Without them a bf16 matrix-vector product may still stream faster than fp32 — or not, once
    the norms and attention run emulated — so given a calibration, its timing of this model's
    decoding steps decides either way. Weights small enough to stay in the caches (given
    `weight_bytes` in fp32) are not bound by memory at all: fp32, nothing to time.
    """
    if weight_bytes is not None and weight_bytes < CACHE_RESIDENT_BYTES:
        size = f"{weight_bytes / 2**20:.1f} MiB"
        return Choice(
            "float32", reason=f"weights of {size} stay in cache: decoding is not memory-bound"
        )
    if calibrate is not None:
        units = "no bf16 units" if features.units == "none" else features.units
        return _by_timing(calibrate(), f"{units}, measured on this model's decoding steps")
    if features.units != "none":
        return Choice("bfloat16", reason=f"{features.units}: half the bytes per token to stream")
    return Choice("float32", reason="no bf16 matrix units, and not calibrated for this model")


# ---------------------------------------------------------------------------------------------
# Calibrations: a fraction of a second each, at the model's own shapes


def _best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # the first call allocates and picks kernels
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def training_calibration(model_cfg, batch_size: int, max_tokens: int = 4096) -> Calibration:
    """Times one block's forward and backward at the run's micro-batch in each given Mode, each
    in the context a training step would run it (`compute_context`).

    One block holds every kind of op a step runs in the proportions the model has; the token
    count is capped so a large model's calibration still takes well under a second per repeat.
    """

    def run(modes: list[Mode]) -> dict[Mode, float]:
        from engine.model import Block  # the model imports config; keep this module light

        torch.manual_seed(0)
        block = Block(model_cfg)
        rows = max(1, min(batch_size, max_tokens // model_cfg.block_size))
        T = min(model_cfg.block_size, max_tokens)
        x = torch.randn(rows, T, model_cfg.n_embd, requires_grad=True)
        rope = None
        if model_cfg.pos == "rope":
            from engine.model import rope_tables

            cos, sin = rope_tables(model_cfg)
            rope = (cos[:T], sin[:T])

        def step(mode: Mode) -> Callable[[], None]:
            def go() -> None:
                with compute_context(torch.device("cpu"), getattr(torch, mode[0]), mode[1]):
                    y = block(x, rope)
                y.float().square().mean().backward()
                block.zero_grad(set_to_none=True)
                x.grad = None

            return go

        steps = {mode: step(mode) for mode in modes}

        def timed(mode: Mode) -> float:
            with matmul_precision(mode[1]):
                began = time.perf_counter()
                steps[mode]()
                return time.perf_counter() - began

        for mode in modes:  # the first calls allocate and have oneDNN prepare its kernels
            for _ in range(2):
                timed(mode)
        # rounds that take each mode in turn, so a machine getting busier or quieter falls on
        # all of them alike; the best of each counts
        best = dict.fromkeys(modes, float("inf"))
        for _ in range(5):
            for mode in modes:
                best[mode] = min(best[mode], timed(mode))
        return best

    return run


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul precision set for a while (it is process-wide)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def attends_by_products(where: torch.device, matmul: str) -> bool:
    """Whether attention runs as plain matrix products rather than the flash kernel: on a CPU
    with bf16 matmuls, where the flash kernel splits attention into small blocks and each of
    their products pays bf16's conversion on its own (a Shakespeare-char step 1.9x slower than
    full fp32); as a few large products the conversion is paid once and the units win. Those
    products keep the T×T scores for backward (sizing.attention_score_bytes)."""
    return where.type == "cpu" and matmul == "medium"


@contextlib.contextmanager
def compute_context(where: torch.device, dtype: torch.dtype, matmul: str) -> Iterator[None]:
    """What a forward pass runs inside: autocast to `dtype` (none for fp32), and the attention
    kernel `attends_by_products` says."""
    with contextlib.ExitStack() as stack:  # entered at `with`, and left even if a part fails
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(where.type, dtype=dtype))
        if attends_by_products(where, matmul):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def generation_calibration(model: torch.nn.Module, rows: int = 1) -> Calibration:
    """Times decoding steps of this very model (KV cache, `rows` rows) with its weights in fp32
    and in a bf16 copy: the whole step, so the norms and attention count as well as the
    matrices."""

    def run() -> dict[str, float]:
        import copy

        out = {}
        steps = 3
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            m = copy.deepcopy(model).to(dtype).eval()
            prompt = torch.zeros(rows, 1, dtype=torch.long)

            @torch.inference_mode()
            def go(m=m, prompt=prompt) -> None:
                cache = m.make_cache(rows, max_len=prompt.size(1) + steps)
                logits = m(prompt, cache=cache, last_only=True)[0]
                for _ in range(steps):
                    logits = m(logits[:, -1].argmax(-1, keepdim=True), cache=cache, last_only=True)[
                        0
                    ]

            out[name] = _best_seconds(go, 2)
            del m
        return out

    return run
