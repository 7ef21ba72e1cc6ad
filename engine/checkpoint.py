"""Checkpoints: the one writer and reader of the payload, atomic saves, rotation, safe loads.

A checkpoint is the dict of the trainer's parts' state_dicts beside what the run is (config,
tokenizer spec), saved with `torch.save` and loaded with `weights_only=True`, so a file from
anywhere can never run code on the machine loading it. Format 2 (FORMAT_VERSION):

    format_version  2
    config          the run's config as a dict;  tokenizer: its spec
    model           the GPT's weights, as one process holds them
    optimizer       {"adamw": AdamW state by parameter index, "scaler": GradScaler state}
    progress        {"step", "tokens"}
    world_size      processes that wrote it
    ranks           one {"data": loader position, "rng": generators} per process
    lora            only for a LoRA run: {rank, alpha, dropout, targets, base}; "model" then
                    holds the adapters alone, and `base` is the frozen model they adapt
    health          engine.health's guard: its recent losses and norms, skip and rollback
                    counts, the learning-rate scale of rollbacks ({} or absent: start afresh)

No checkpoint is written from weights that are not finite (NonFiniteWeights). Format 1 (no format_version: every release before it) is read by upgrading it here, so
`pack` and `read` are the only code that knows these keys' layout.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from engine.contract.config import ModelConfig
from engine.contract.errors import UsageError, on_disk
from engine.contract.rundir import RunDir
from engine.files import atomic_write, fsync_dir, remove_stale_temps
from engine.health import all_finite
from engine.model import GPT

FORMAT_VERSION = 2
STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
BEST = "best.pt"


class CheckpointManager:
    """Owns `<run_dir>/checkpoints/`: step files, rotation and the best copy."""

    def __init__(self, run_dir: str | Path, keep_last: int = 5, keep_best: bool = True) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.keep_best = keep_best

    def save(
        self, state: dict[str, Any], step: int, val_loss: float | None = None
    ) -> tuple[Path, bool]:
        """Write step_<step>.pt atomically, drop all but the newest `keep_last`, update best.

        Returns the path and whether it became the best checkpoint.
        """
        if not all_finite(state.get("model", {})):
            raise NonFiniteWeights(step)
        with on_disk(self.dir, "creating the checkpoint folder"):
            self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:08d}.pt"
        atomic_save(state, path)
        is_best = False
        if self.keep_best and val_loss is not None and val_loss < self.best_val_loss():
            # a hard link costs no space and survives the rotation of the step file
            tmp = self.dir / f".{BEST}.tmp"
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, tmp)
            os.replace(tmp, self.dir / BEST)
            RunDir(self.dir.parent).write_best(step, val_loss)
            is_best = True
        for old in self.step_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        fsync_dir(self.dir)
        return path, is_best

    def remove_stale(self) -> list[tuple[Path, int]]:
        """Temporary files of writers killed mid-save; call with the run's lock held."""
        return remove_stale_temps(self.dir)

    def step_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if STEP_FILE.match(p.name))

    def latest(self) -> Path | None:
        files = self.step_files()
        return files[-1] if files else None

    def best(self) -> Path | None:
        path = self.dir / BEST
        return path if path.is_file() else None

    def best_val_loss(self) -> float:
        best = RunDir(self.dir.parent).best_val_loss()
        return float("inf") if best is None else best


class NonFiniteWeights(UsageError):
    """Weights holding NaN or infinity: never written over good checkpoints."""

    def __init__(self, step: int) -> None:
        super().__init__(
            f"step {step}: the weights hold NaN or infinity, so no checkpoint was written (the "
            "kept ones are from before); lower train.lr, raise train.warmup_steps or set "
            "train.grad_clip, then --resume"
        )
        self.step = step


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Temporary file, fsync, rename: a crash leaves the old file or the new one, never half."""
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without ever unpickling code; every failure is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise UsageError(
            f"{path}: is empty (0 bytes), so the write that made it never finished; "
            "use an earlier checkpoint of the run"
        )
    try:
        with warnings.catch_warnings():  # garbage can look like an odd pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(err) or type(err).__name__
        if "Unsupported global" in text or "GLOBAL" in text:
            raise UsageError(
                f"{path}: holds pickled Python objects, and loading it could run code; "
                "refusing. Only checkpoints of plain tensors and values are loaded."
            ) from None
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format: the zip's own fault helps
        # otherwise the unpickler's complaint depends on which bytes it met ("pop from empty
        # list"), which tells a user nothing
        unpickling = not zipped or "Weights only load failed" in text
        reason = "unsupported pickle data" if unpickling else text
        raise UsageError(
            f"{path}: not a readable checkpoint ({reason.splitlines()[0]}); "
            "give a .pt file written by engine.train"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UsageError(f"{path}: not a gpt-studio checkpoint (no model weights and config)")
    return read(state, path)


def pack(
    *,
    config: dict[str, Any],
    tokenizer: dict[str, Any],
    model: dict[str, Any],
    optimizer: dict[str, Any],
    progress: dict[str, Any],
    ranks: list[dict[str, Any]],
    lora: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload the trainer's parts make, in the current format (see the module's doc).
    `health` (engine.health) is optional: a checkpoint without it starts the guard afresh."""
    payload = {
        "format_version": FORMAT_VERSION, "config": config, "tokenizer": tokenizer,
        "model": model, "optimizer": optimizer, "progress": progress,
        "world_size": len(ranks), "ranks": ranks, "health": health or {},
    }  # fmt: skip
    if lora is not None:
        payload["lora"] = lora
    return payload


def read(state: dict[str, Any], source: str | Path = "checkpoint") -> dict[str, Any]:
    """A loaded payload in the current format: format 1 upgraded, a newer one refused."""
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise UsageError(
            f"{source}: checkpoint format_version {version!r} is not one this gpt-studio reads "
            f"(1 to {FORMAT_VERSION}); load it with the release that wrote it"
        )
    if version == FORMAT_VERSION:
        return state
    # format 1: flat keys, and "ranks" of {"loader", "rng"} only when several processes wrote it
    ranks = state.get("ranks") or [{"loader": state.get("loader"), "rng": state.get("rng")}]
    optimizer = None  # a weights-only file continues nothing, but its weights still load
    if "optimizer" in state:
        optimizer = {"adamw": state["optimizer"], "scaler": state.get("scaler")}
    return {
        "format_version": FORMAT_VERSION, "config": state["config"],
        "tokenizer": state.get("tokenizer"), "model": state["model"],
        "optimizer": optimizer,
        "progress": {"step": state.get("step", 0), "tokens": state.get("tokens", 0)},
        "world_size": state.get("world_size", len(ranks)),
        "ranks": [{"data": r["loader"], "rng": r["rng"]} for r in ranks],
    }  # fmt: skip


def rank_part(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """This process's data position and RNG state, from a checkpoint of any number of processes.

    A prepared-shards position is one global row, the same on every rank, so it fits any
    number; a streaming one belongs to its rank, and its loader refuses a different number.
    A rank the checkpoint did not have keeps its fresh seed ("rng" None).
    """
    ranks = state["ranks"]
    data = ranks[rank if len(ranks) == world_size else 0]["data"]
    rng = ranks[rank]["rng"] if rank < len(ranks) else None
    return {"data": data, "rng": rng}


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its best checkpoint (else its latest)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        manager = CheckpointManager(path if path.name != "checkpoints" else path.parent)
        found = manager.best() or manager.latest()
        if found:
            return found
        raise UsageError(f"{path}: no checkpoints in this run directory yet")
    raise UsageError(f"{path}: no such checkpoint file or run directory")


def load_weights(source: str | Path) -> dict[str, Any]:
    """Model weights, model config and tokenizer from anywhere a model can come from.

    `hf:PATH` imports a Hugging Face directory (engine.hf); anything else is a checkpoint file
    or a run directory (its best checkpoint, else its latest). The dict has at least "model",
    "config" (with "model"), "tokenizer", "step" and "source", so sampling, export and
    fine-tuning take every kind through one code path.
    """
    text = str(source)
    if text.startswith("hf:"):
        from engine import hf

        return hf.load(text[3:])
    path = resolve(source)
    state = load(path)
    model_cfg = state["config"].get("model") if isinstance(state["config"], dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(state.get("tokenizer"), dict):
        raise UsageError(
            f"{path}: not a gpt-studio checkpoint (needs a model config and a tokenizer spec)"
        )
    state["step"] = int(state["progress"]["step"])
    state["source"] = str(path)
    # a torch.compile'd model saves its weights under this prefix
    state["model"] = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    if isinstance(state.get("lora"), dict):  # adapters only: merged onto the base they adapt
        state["model"] = merged_lora(state)
    return state


def lora_base(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The frozen base weights a LoRA checkpoint refers to, grown to its vocabulary."""
    from engine.lora import adapter_state

    ref = state["lora"]["base"]
    try:
        base = load_weights(ref)
    except UsageError as err:
        raise UsageError(
            f"{state.get('source', 'checkpoint')}: its LoRA base {ref}: {err}"
        ) from None
    weights = {k: v for k, v in base["model"].items() if not adapter_state({k: v})}
    rows = state["config"]["model"]["vocab_size"]
    grow_vocab(weights, rows, state["config"]["model"].get("tie_embeddings", True))
    return weights


def merged_lora(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    from engine import lora

    return lora.merge(lora_base(state), state["model"], lora.scale_of(state["lora"]))


def grow_vocab(weights: dict[str, torch.Tensor], rows: int, tied: bool) -> None:
    """Embedding (and output) rows up to `rows` for ids the weights never had, such as the chat
    tokens: each new row starts near the mean of the trained rows, a token like an average one,
    plus a fixed small noise so that new tokens differ (LoRA never trains these rows)."""
    for name in ("wte.weight", "lm_head.weight"):
        old = weights.get(name)
        if old is not None and old.size(0) < rows:
            g = torch.Generator().manual_seed(rows)
            noise = torch.randn(rows - old.size(0), old.size(1), generator=g) * old.float().std()
            extra = old.float().mean(0, keepdim=True) + noise
            weights[name] = torch.cat([old, extra.to(old.dtype)])
    if tied and "wte.weight" in weights:
        weights["lm_head.weight"] = weights["wte.weight"]


def base_reference(init_from: str) -> str:
    """`train.init_from` as a reference that still holds from another working directory."""
    if init_from.startswith("hf:"):
        return "hf:" + str(Path(init_from[3:]).expanduser().resolve())
    return str(resolve(init_from).resolve())


def model_config(state: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a `load_weights` dict describes."""
    try:
        cfg = ModelConfig(**state["config"]["model"])
    except TypeError as err:
        source = state.get("source", "checkpoint")
        raise UsageError(f"{source}: its model config does not fit this version ({err})") from None
    if cfg.vocab_size <= 0:
        raise UsageError(f"{state.get('source', 'checkpoint')}: its model config has no vocab_size")
    return cfg


def build_model(state: dict[str, Any], device: str | torch.device = "cpu") -> GPT:
    """The GPT a `load_weights` dict describes, weights loaded, in eval mode."""
    model = GPT(model_config(state))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else lines[0]
        source = state.get("source", "checkpoint")
        raise UsageError(f"{source}: its weights do not fit its model config ({first})") from None
    return model.to(device).eval()
