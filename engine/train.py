"""Training: `python -m engine.train CONFIG.toml [--section.key=value ...] [--resume [PATH]]`.

The loop reads as a page — build, resume, then step, log, evaluate, sample, save — and calls the
components that own each concern: engine.data for batches, engine.schedule for the learning
rate, engine.checkpoint for state on disk, engine.metrics for where events go, and
engine.distributed for running as one of several processes under torchrun.
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

from engine import checkpoint, config, data, device, distributed, metrics, optim, remote
from engine import protocol as p
from engine.config import Config
from engine.errors import UsageError, cli_entry
from engine.generate import generate
from engine.model import GPT
from engine.tokenizer import Tokenizer, from_spec


@dataclass
class State:
    """What the loop carries between steps."""

    step: int = 0
    tokens: int = 0
    stop: str = ""  # why the loop should end early: "signal" or "stopped", as all ranks agreed
    signalled: bool = False  # SIGINT/SIGTERM seen here: a request, until the ranks agree on it
    paused: bool = False
    losses: list[float] = field(default_factory=list)


@dataclass
class Run:
    """Everything one training run is made of, built once before the loop."""

    cfg: Config
    runtime: device.Runtime
    group: distributed.Group
    tokenizer: Tokenizer
    model: GPT  # unwrapped under DDP, sharded in place under FSDP
    parallel: distributed.Parallel
    step_fn: Any  # parallel.module, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: Any
    val_loader: Any | None
    saver: checkpoint.CheckpointManager
    reporter: metrics.Reporter
    link: remote.StudioLink | None
    state: State
    studio: bool = False  # whether rank 0's studio is still connected, as all ranks agreed
    last_norm: torch.Tensor | float = 0.0  # gradient norm of the latest step, before clipping
    notes: list[str] = field(default_factory=list)  # warnings from building, logged at start

    def save(self, val_loss: float | None = None) -> None:
        """Every rank takes part: the weights and optimizer state as one process would hold
        them (gathered under FSDP), and each rank's data position and RNG; rank 0 writes."""
        s = self.state
        model_state, optimizer_state = self.parallel.full_state(self.optimizer)
        ranks = self.group.gather(
            {"loader": self.train_loader.state_dict(), "rng": rng_state(self.runtime.device)}
        )
        if self.group.is_main:
            payload = {
                "model": model_state, "optimizer": optimizer_state,
                "scaler": self.scaler.state_dict(), "loader": ranks[0]["loader"],
                "rng": ranks[0]["rng"], "step": s.step, "tokens": s.tokens,
                "config": config.to_dict(self.cfg), "tokenizer": self.tokenizer.spec(),
                "world_size": self.group.world_size,
            }  # fmt: skip
            if self.group.world_size > 1:
                payload["ranks"] = ranks
            path, best = self.saver.save(payload, s.step, val_loss)
            self.reporter.emit(
                p.Checkpoint(step=s.step, path=str(path), best=best, val_loss=val_loss)
            )
        self.group.wait_for_main()

    def sample(
        self, prompts: list[str], max_tokens: int, request_id: str = "", **settings: Any
    ) -> None:
        """Rank 0 writes a sample per prompt; under FSDP every rank helps gather the model."""
        model = self.parallel.sampling_model()
        if model is None:
            return
        for prompt in prompts:
            with self.runtime.autocast:
                text = generate(model, self.tokenizer, prompt, max_tokens, **settings)
            self.reporter.emit(
                p.Sample(step=self.state.step, prompt=prompt, text=text, id=request_id)
            )

    def close(self) -> None:
        self.reporter.close()
        self.train_loader.close()
        if self.val_loader is not None:
            self.val_loader.close()


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    console: metrics.Sink | None = None,
    quiet: bool = False,
    until: int | None = None,
    report_to: str | None = None,
) -> State:
    """Train per `cfg`; returns the final state. `resume` is "" for the run's latest checkpoint.

    `until` stops after that step as a stop request would — checkpoint, then `done` — while the
    schedule still runs to `train.max_steps`, so a later `--resume` continues the same run.
    `report_to` is the studio's address: events go there too, and its commands are obeyed.
    """
    metrics.check_optional_sinks(cfg)  # a missing package fails now, not after preparing data
    with distributed.start(device.pick(cfg.train.device, cfg.train.dtype)) as group:
        main = group.is_main  # only rank 0 talks to the studio and the console
        link = remote.connect(report_to) if report_to and main else None
        if console is None and not quiet and main:
            console = metrics.console_for()
        early = metrics.Reporter([s for s in (console, link) if s is not None and main])
        try:
            run = build(cfg, resume, early, link, group)
        except BaseException as err:
            if link is not None:  # the console hears it from the command line's error line
                link.write(p.Error(message=str(err) if isinstance(err, UsageError) else repr(err)))
            early.close()
            raise
        try:
            loop(run, until)
        finally:
            run.close()
    return run.state


def build(
    cfg: Config,
    resume: str | None,
    early: metrics.Reporter,
    link: remote.StudioLink | None,
    group: distributed.Group,
) -> Run:
    """Data, tokenizer, model, optimizer and loaders, restored from a checkpoint if resuming."""
    run_dir = cfg.run_dir
    if resume is None and group.is_main:
        _refuse_to_overwrite(run_dir)
    runtime = group.runtime
    device.configure_cuda()
    seed_everything(cfg.train.seed)

    notes: list[str] = []  # said after the start event
    restored = _load_resume(cfg, resume) if resume is not None else None
    # weights to fine-tune: a checkpoint, a run directory, or hf:PATH (a Hugging Face folder)
    base = checkpoint.load_weights(cfg.train.init_from) if cfg.train.init_from else None
    source = restored or base
    tokenizer = from_spec(source["tokenizer"]) if source else None
    prepared, tokenizer = _prepare_data(cfg, tokenizer, early, group)
    if source:  # a checkpoint fixes the architecture
        model_cfg = checkpoint.model_config(source)
        differ = _model_differences(cfg, model_cfg)
        if differ and restored:
            raise UsageError(f"the config's model differs from the checkpoint's: {differ}")
        if differ:  # fine-tuning: the weights bring their shape; say what was not used
            notes.append(f"model shape from {cfg.train.init_from}, not the config: {differ}")
        model_cfg.dropout = cfg.model.dropout
        model_cfg.activation_checkpointing = cfg.model.activation_checkpointing
    else:
        model_cfg = config.resolve_model(cfg, tokenizer.vocab_size)
    cfg.model = model_cfg
    _check_prompts(cfg, tokenizer)

    model = GPT(model_cfg)  # on the CPU, the same on every rank; Parallel places it
    if source:
        model.load_state_dict(source["model"])
    t = cfg.train
    group.seed(t.seed)
    parallel = distributed.Parallel(model, group, t.parallel)
    optimizer = optim.build(model, t)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.needs_scaler)
    train_loader, val_loader = data.make_loaders(
        cfg, prepared, tokenizer, runtime.device, group.rank, group.world_size
    )
    state = State()
    if restored:
        parallel.load_optimizer(optimizer, restored["optimizer"])
        scaler.load_state_dict(restored["scaler"])
        loader_state, rng = _rank_state(restored, group)
        train_loader.load_state_dict(loader_state)
        if rng is not None:
            set_rng_state(rng, runtime.device)
        state.step, state.tokens = restored["step"], restored["tokens"]
    del source, restored, base

    reporter = metrics.Reporter([])  # the other ranks report nothing
    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(cfg, run_dir / "config.toml", overwrite=True)
        reporter = metrics.open_sinks(cfg, early.sinks)
    saver = checkpoint.CheckpointManager(
        run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best
    )
    step_fn = torch.compile(parallel.module) if t.compile else parallel.module
    return Run(
        cfg, runtime, group, tokenizer, model, parallel, step_fn, optimizer, scaler,
        train_loader, val_loader, saver, reporter, link, state, studio=link is not None,
        notes=notes,
    )  # fmt: skip


def _prepare_data(
    cfg: Config, tokenizer: Tokenizer | None, early: metrics.Reporter, group: distributed.Group
) -> tuple[data.Prepared | None, Tokenizer]:
    """The prepared dataset (None when streaming) and its tokenizer.

    Rank 0 prepares first — or, streaming, builds the tokenizer — while the others wait for its
    tokenizer, so a trained tokenizer is the same on every rank; they then open the same
    prepared data from the cache (on another node without a shared cache, they prepare the same
    bytes again).
    """
    if not group.is_main:
        tokenizer = from_spec(group.broadcast())
    prepared = None
    if not cfg.data.streaming:
        prepared = data.prepare(cfg, tokenizer=tokenizer, emit=early.emit)
        tokenizer = prepared.tokenizer
    elif tokenizer is None:
        tokenizer = data.build_tokenizer_for(cfg, log=lambda text: early.emit(p.Log(text)))
    if group.is_main:
        group.broadcast(tokenizer.spec())
    return prepared, tokenizer


def _rank_state(
    restored: dict[str, Any], group: distributed.Group
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """This rank's data position and RNG state from a checkpoint of any number of processes.

    A prepared-shards position is one global row, the same on every rank, so it fits any
    number; a streaming one belongs to its rank, and its loader refuses a different number.
    A rank the checkpoint did not have keeps its fresh seed.
    """
    ranks = restored.get("ranks") or [{"loader": restored["loader"], "rng": restored["rng"]}]
    loader_state = ranks[group.rank if len(ranks) == group.world_size else 0]["loader"]
    rng = ranks[group.rank]["rng"] if group.rank < len(ranks) else None
    return loader_state, rng


def loop(run: Run, until: int | None = None) -> None:
    """Step, log, evaluate, sample, save — and between steps, obey the studio — to the end."""
    cfg, t, state, reporter = run.cfg, run.cfg.train, run.state, run.reporter
    world = run.group.world_size
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size * world  # all ranks
    flops_per_step = run.model.flops_per_token() * tokens_per_step
    peak = run.runtime.peak_flops * world if run.runtime.peak_flops else None
    reporter.emit(p.Start(
        run=cfg.name, config=config.to_dict(cfg), params=run.model.num_params(),
        device=str(run.runtime.device), dtype=str(run.runtime.dtype).removeprefix("torch."),
        max_steps=t.max_steps, tokens_per_step=tokens_per_step, world_size=world,
        resumed_from=state.step,
    ))  # fmt: skip
    for note in run.notes:
        reporter.emit(p.Log(note, level="warning"))
    if world > 1:
        reporter.emit(p.Log(
            f"global batch: {t.batch_size} sequences x {t.grad_accum} micro-batches x {world} "
            f"processes = {t.batch_size * t.grad_accum * world} sequences, {tokens_per_step:,} "
            f"tokens per step ({run.parallel.kind}, {cfg.model.block_size} tokens each)"
        ))  # fmt: skip
    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=run.runtime.device)
    try:
        with _stop_on_signals(state, at_once=world == 1):
            while state.step < t.max_steps and not state.stop:
                lr = optim.set_step(run.optimizer, state.step, t)
                loss_sum += train_step(run)
                state.step += 1
                state.tokens += tokens_per_step
                window_steps += 1
                if until is not None and state.step >= until and not state.stop:
                    state.stop = "stopped"
                extras_start = time.perf_counter()
                obey(run, agree(run))  # pause, stop, save or sample, on every rank at once
                last = state.step == t.max_steps or bool(state.stop)

                if state.step % cfg.log.interval == 0 or last:
                    # the one sync per interval; the mean over all ranks' micro-batches
                    mean_loss = run.group.mean(loss_sum).item() / window_steps
                    if not math.isfinite(mean_loss):
                        raise Diverged(state.step, mean_loss)
                    state.losses.append(mean_loss)
                    step_s = (extras_start - window_start) / window_steps
                    reporter.emit(p.Step(
                        step=state.step, loss=mean_loss, lr=lr, grad_norm=float(run.last_norm),
                        tokens_per_s=tokens_per_step / step_s, step_ms=1000 * step_s,
                        mfu=flops_per_step / step_s / peak if peak else None,
                        mem_gb=run.runtime.memory_gb(), tokens=state.tokens,
                        eta_s=(t.max_steps - state.step) * step_s,
                    ))  # fmt: skip
                    loss_sum.zero_()
                    window_steps, window_start = 0, extras_start
                val_loss = None
                if run.val_loader is not None and (state.step % t.eval_interval == 0 or last):
                    val_loss = evaluate(run.model, run.val_loader, t.eval_steps, run.runtime)
                    reporter.emit(p.Eval(step=state.step, val_loss=val_loss, ppl=_ppl(val_loss)))
                if (state.step % t.sample_interval == 0 or last) and t.sample_prompts:
                    run.sample(t.sample_prompts, t.sample_tokens, seed=t.seed + state.step)
                if state.step % cfg.checkpoint.interval == 0 or last:
                    run.save(val_loss)
                if state.paused:  # after this step's records, so they show where it paused
                    hold(run)
                    if state.stop and not last:
                        run.save()  # stopped while paused: the step is kept
                window_start += time.perf_counter() - extras_start  # not step time
        reporter.emit(p.Done(step=state.step, reason=state.stop or "finished",
                             elapsed_s=time.perf_counter() - started))  # fmt: skip
    except Diverged as err:
        reporter.emit(p.Error(message=str(err), step=err.step))
        raise UsageError(str(err)) from None
    except BaseException as err:
        reporter.emit(p.Error(message=f"{type(err).__name__}: {err}", step=state.step))
        raise


def train_step(run: Run) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches, at the learning rates optim.set_step
    gave the groups; returns the mean loss, unsynced."""
    t = run.cfg.train
    loss_sum = torch.zeros((), device=run.runtime.device)
    for micro in range(t.grad_accum):
        x, y = run.train_loader.next()
        with run.parallel.gradient_sync(last=micro == t.grad_accum - 1):
            with run.runtime.autocast:
                _, loss = run.step_fn(x, y)
            run.scaler.scale(loss / t.grad_accum).backward()
        loss_sum += loss.detach() / t.grad_accum
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(
        run.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf
    )
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.last_norm = distributed.local(norm)
    return loss_sum


def agree(run: Run, wait: float = 0.0) -> list[p.Command]:
    """The studio's latest commands (waiting up to `wait` seconds for one), and a stop any rank
    has seen, made the same on every rank: only rank 0 hears the studio, and a signal may reach
    the ranks at different steps."""
    commands: list[p.Command] = []
    link = run.link
    if link is not None:
        if wait:
            command = link.wait(wait)
            commands = [command] if command is not None else []
        else:
            commands = link.poll()
    connected = link is not None and link.connected
    state = run.state
    asked = "signal" if state.signalled else state.stop
    commands, state.stop, run.studio = run.group.share(commands, asked, connected)
    return commands


def obey(run: Run, commands: list[p.Command]) -> None:
    """Carry out the studio's commands between two steps, on every rank alike."""
    state = run.state
    for command in commands:
        if isinstance(command, p.Pause) and not state.paused:
            state.paused = True
            run.reporter.emit(p.Log(f"paused after step {state.step}"))
        elif isinstance(command, p.Resume) and state.paused:
            state.paused = False
            run.reporter.emit(p.Log(f"resumed at step {state.step}"))
        elif isinstance(command, p.Stop):
            state.stop, state.paused = "stopped", False
        elif isinstance(command, p.Save):
            run.save()
        elif isinstance(command, p.SampleRequest):
            _answer_sample(run, command)


def hold(run: Run) -> None:
    """Stay paused, still obeying save, sample and stop, until resumed, stopped or signalled
    (or the studio that paused us is gone, when nobody could resume us)."""
    state = run.state
    while state.paused and not state.stop and run.studio:
        obey(run, agree(run, wait=0.2))
    state.paused = False


def _answer_sample(run: Run, request: p.SampleRequest) -> None:
    try:
        run.sample(
            [request.prompt], request.max_tokens, request.id, temperature=request.temperature,
            top_k=request.top_k, top_p=request.top_p, seed=None,
        )  # fmt: skip
    except UsageError as err:  # a prompt the tokenizer cannot encode: the run goes on
        run.reporter.emit(p.Log(f"sample {request.id}: {err}", level="warning"))


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


def rng_state(where: torch.device) -> dict[str, Any]:
    """Every RNG a step touches, as plain values a weights_only load accepts.

    Only the training GPU's CUDA generator: reading every visible GPU's would open a CUDA
    context on each of them from every process of a multi-GPU job.
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if where.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(where)
    return state


def set_rng_state(state: dict[str, Any], where: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        if isinstance(state["cuda"], list):  # every GPU's, as checkpoints once held them
            torch.cuda.set_rng_state_all(state["cuda"])
        elif where.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], where)


@contextmanager
def _stop_on_signals(state: State, at_once: bool = True):
    """SIGINT/SIGTERM finish the current step, then save and exit cleanly; a second SIGINT
    stops at once when `at_once` — not under torchrun, which passes the terminal's Ctrl-C on to
    processes that already had it, and whose own SIGKILL after a grace period is the hard stop."""

    def handler(signum: int, frame: Any) -> None:
        if state.signalled and signum == signal.SIGINT and at_once:
            raise KeyboardInterrupt
        state.signalled = True  # acted on after the current step, when `agree` sees it

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


def _model_differences(cfg: Config, saved: config.ModelConfig) -> str:
    """The config's model keys that differ from a checkpoint's, as `model.k = mine (saved)`."""
    mine = config.to_dict(cfg)["model"]
    theirs = config.to_dict(config.Config(model=saved))["model"]
    return ", ".join(
        f"model.{k} = {mine[k]!r} (checkpoint: {v!r})"
        for k, v in theirs.items()
        if k not in ("vocab_size", "dropout", "activation_checkpointing") and mine[k] != v
    )


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
    parser.add_argument(
        "--report-to", metavar="ADDRESS",
        help="the studio's socket (unix:PATH or tcp:127.0.0.1:PORT): send it every event and "
        "obey its pause, resume, stop, save and sample commands; without it the run is headless",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    cfg = config.load(args.config, overrides)
    state = train(cfg, resume=args.resume, report_to=args.report_to)
    return 0 if state.step > 0 or cfg.train.max_steps == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
