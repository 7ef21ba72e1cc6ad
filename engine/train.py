"""Training: `python -m engine.train CONFIG.toml [--section.key=value ...] [--resume [PATH]]`.

The loop reads as a page — build, resume, then step, log, evaluate, sample, save — and calls the
components that own each concern: engine.data for batches, engine.schedule for the learning
rate, engine.checkpoint for state on disk, engine.metrics for where events go.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import checkpoint, config, data, device, metrics
from engine import protocol as p
from engine.config import Config
from engine.errors import UsageError, cli_entry
from engine.generate import generate
from engine.model import GPT
from engine.schedule import lr_at
from engine.tokenizer import Tokenizer, from_spec


@dataclass
class State:
    """What the loop carries between steps."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    stop: str = ""  # why the loop should end early: "signal" or "stopped"
    losses: list[float] = field(default_factory=list)


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    console: metrics.Sink | None = None,
    quiet: bool = False,
    until: int | None = None,
) -> State:
    """Train per `cfg`; returns the final state. `resume` is "" for the run's latest checkpoint.

    `until` stops after that step as a stop request would — checkpoint, then `done` — while the
    schedule still runs to `train.max_steps`, so a later `--resume` continues the same run.
    """
    run_dir = cfg.run_dir
    if resume is None:
        _refuse_to_overwrite(run_dir)
    metrics.check_optional_sinks(cfg)  # a missing package fails now, not after preparing data
    runtime = device.pick(cfg.train.device, cfg.train.dtype)
    device.configure_cuda()
    seed_everything(cfg.train.seed)

    restored = _load_resume(cfg, resume) if resume is not None else None
    base = checkpoint.load(checkpoint.resolve(cfg.train.init_from)) if cfg.train.init_from else None
    source = restored or base
    if console is None and not quiet:
        console = metrics.console_for()
    emit = console.write if console is not None else None
    tokenizer = from_spec(source["tokenizer"]) if source else None
    prepared = None
    if not cfg.data.streaming:
        prepared = data.prepare(cfg, tokenizer=tokenizer, emit=emit)
        tokenizer = prepared.tokenizer
    elif tokenizer is None:
        tokenizer = data.build_tokenizer_for(cfg)
    model_cfg = (
        config.ModelConfig(**source["config"]["model"])
        if source
        else config.resolve_model(cfg, tokenizer.vocab_size)
    )
    if source:  # a checkpoint fixes the architecture; say so if the config disagrees
        _check_same_model(cfg, model_cfg)
    cfg.model = model_cfg
    _check_prompts(cfg, tokenizer)

    model = GPT(model_cfg).to(runtime.device)
    if source:
        model.load_state_dict(source["model"])
    optimizer = model.optimizer(
        lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        betas=(cfg.train.beta1, cfg.train.beta2),
    )  # fmt: skip
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_scaler)
    train_loader, val_loader = data.make_loaders(cfg, prepared, tokenizer, runtime.device)
    state = State()
    if restored:
        optimizer.load_state_dict(restored["optimizer"])
        scaler.load_state_dict(restored["scaler"])
        train_loader.load_state_dict(restored["loader"])
        set_rng_state(restored["rng"])
        state.step, state.tokens = restored["step"], restored["tokens"]
    del source, restored, base

    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(cfg, run_dir / "config.toml", overwrite=True)
    reporter = metrics.open_sinks(cfg, console)
    saver = checkpoint.CheckpointManager(
        run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best
    )
    state.best_val = saver.best_val_loss()
    step_fn = torch.compile(model) if cfg.train.compile else model
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * model_cfg.block_size
    reporter.emit(p.Start(
        run=cfg.name, config=config.to_dict(cfg), params=model.num_params(),
        device=str(runtime.device), dtype=str(runtime.dtype).removeprefix("torch."),
        max_steps=cfg.train.max_steps, tokens_per_step=tokens_per_step, resumed_from=state.step,
    ))  # fmt: skip

    def save(val_loss: float | None) -> None:
        payload = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "loader": train_loader.state_dict(),
            "rng": rng_state(), "step": state.step, "tokens": state.tokens,
            "config": config.to_dict(cfg), "tokenizer": tokenizer.spec(),
        }  # fmt: skip
        path, best = saver.save(payload, state.step, val_loss)
        reporter.emit(p.Checkpoint(step=state.step, path=str(path), best=best, val_loss=val_loss))

    t = cfg.train
    flops_per_step = model.flops_per_token() * tokens_per_step
    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=runtime.device)
    try:
        with _stop_on_signals(state):
            while state.step < t.max_steps and not state.stop:
                lr = lr_at(state.step, t)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                for _ in range(t.grad_accum):
                    x, y = train_loader.next()
                    with runtime.autocast:
                        _, loss = step_fn(x, y)
                    scaler.scale(loss / t.grad_accum).backward()
                    loss_sum += loss.detach() / t.grad_accum
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf
                )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.tokens += tokens_per_step
                window_steps += 1
                if until is not None and state.step >= until and not state.stop:
                    state.stop = "stopped"

                last = state.step == t.max_steps or bool(state.stop)
                if state.step % cfg.log.interval == 0 or last:
                    mean_loss = loss_sum.item() / window_steps  # the one sync per interval
                    if not math.isfinite(mean_loss):
                        raise Diverged(state.step, mean_loss)
                    state.losses.append(mean_loss)
                    elapsed = time.perf_counter() - window_start
                    step_s = elapsed / window_steps
                    tps = tokens_per_step / step_s
                    reporter.emit(p.Step(
                        step=state.step, loss=mean_loss, lr=lr, grad_norm=float(norm),
                        tokens_per_s=tps, step_ms=1000 * step_s,
                        mfu=flops_per_step / step_s / runtime.peak_flops if runtime.peak_flops else None,
                        mem_gb=runtime.memory_gb(), tokens=state.tokens,
                        eta_s=(t.max_steps - state.step) * step_s,
                    ))  # fmt: skip
                    loss_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                extras_start = time.perf_counter()
                val_loss = None
                if val_loader is not None and (state.step % t.eval_interval == 0 or last):
                    val_loss = evaluate(model, val_loader, t.eval_steps, runtime)
                    reporter.emit(p.Eval(step=state.step, val_loss=val_loss, ppl=_ppl(val_loss)))
                if state.step % t.sample_interval == 0 or last:
                    for prompt in t.sample_prompts:
                        with runtime.autocast:
                            text = generate(model, tokenizer, prompt, t.sample_tokens,
                                            seed=t.seed + state.step)  # fmt: skip
                        reporter.emit(p.Sample(step=state.step, prompt=prompt, text=text))
                if state.step % cfg.checkpoint.interval == 0 or last:
                    save(val_loss)
                window_start += time.perf_counter() - extras_start  # not step time
        reporter.emit(p.Done(step=state.step, reason=state.stop or "finished",
                             elapsed_s=time.perf_counter() - started))  # fmt: skip
    except Diverged as err:
        reporter.emit(p.Error(message=str(err), step=err.step))
        raise UsageError(str(err)) from None
    except BaseException as err:
        reporter.emit(p.Error(message=f"{type(err).__name__}: {err}", step=state.step))
        raise
    finally:
        reporter.close()
        train_loader.close()
        if val_loader is not None:
            val_loader.close()
    return state


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"loss became {loss} by step {step}; lower train.lr, raise train.warmup_steps "
            "or set train.grad_clip"
        )
        self.step = step


@torch.no_grad()
def evaluate(model: GPT, loader: Any, steps: int, runtime: device.Runtime) -> float:
    """Mean loss over the same `steps` validation batches every time, so evals compare."""
    model.eval()
    loader.reset()
    total = 0.0
    for _ in range(steps):
        x, y = loader.next()
        with runtime.autocast:
            _, loss = model(x, y)
        total += loss.item()
    model.train()
    return total / steps


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a step touches, as plain values a weights_only load accepts."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def _stop_on_signals(state: State):
    """SIGINT/SIGTERM finish the current step, then save and exit cleanly; a second SIGINT
    stops at once."""

    def handler(signum: int, frame: Any) -> None:
        if state.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state.stop = "signal"

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _refuse_to_overwrite(run_dir: Path) -> None:
    held = [n for n in ("metrics.jsonl", "checkpoints") if (run_dir / n).exists()]
    if held:
        raise UsageError(
            f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume, "
            "or start a new one with --name=NEW_NAME"
        )


def _load_resume(cfg: Config, resume: str) -> dict[str, Any]:
    if resume:
        return checkpoint.load(checkpoint.resolve(resume))
    latest = checkpoint.CheckpointManager(cfg.run_dir).latest()
    if latest is None:
        raise UsageError(f"--resume: {cfg.run_dir} has no checkpoints to resume from")
    return checkpoint.load(latest)


def _check_same_model(cfg: Config, saved: config.ModelConfig) -> None:
    mine = config.to_dict(cfg)["model"]
    differ = [
        k for k, v in config.to_dict(config.Config(model=saved))["model"].items()
        if k not in ("vocab_size", "dropout", "activation_checkpointing") and mine[k] != v
    ]  # fmt: skip
    if differ:
        shown = ", ".join(
            f"model.{k} = {mine[k]!r} (checkpoint: {getattr(saved, k)!r})" for k in differ
        )
        raise UsageError(f"the config's model differs from the checkpoint's: {shown}")
    saved.dropout = cfg.model.dropout
    saved.activation_checkpointing = cfg.model.activation_checkpointing


def _check_prompts(cfg: Config, tokenizer: Tokenizer) -> None:
    """A prompt the tokenizer cannot encode fails now, not at the first sample mid-run."""
    for prompt in cfg.train.sample_prompts:
        try:
            tokenizer.encode(prompt)
        except UsageError as err:
            raise UsageError(f"train.sample_prompts: {prompt!r}: {err}") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.train",
        description="Train a GPT from a TOML config; any key can be overridden as "
        "--section.key=value (e.g. --train.max_steps=500).",
    )
    parser.add_argument("config", help="a TOML config, e.g. presets/tiny.toml")
    parser.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="PATH",
        help="continue the run from its latest checkpoint, or from PATH "
        "(a checkpoint file or run directory)",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(args.config, overrides)
    state = train(cfg, resume=args.resume)
    return 0 if state.step > 0 or cfg.train.max_steps == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
