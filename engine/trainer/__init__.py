"""The Trainer: build, resume, then step, log, evaluate, sample, save — calling named parts.

    data loaders       engine.data            batches; their position is part of a checkpoint
    model+optimizer    trainer.optim          the step; weights, optimizer and loss-scaler state
    LR schedule        engine.schedule        a pure function of the step: nothing to save
    run control        trainer.control        studio commands and signals, agreed across ranks
    reporting          trainer.reporting      step, eval and sample records to engine.metrics
    checkpointing      engine.checkpoint      the one writer and reader of the payload
    RNG state          trainer.rng            every generator a step touches
    progress           trainer.progress       step and tokens
    health             engine.health          which updates to skip; rollbacks and their LR
    run lock           contract.runlock       one writer per run folder, held for the run

Each part that holds state has state_dict()/load_state_dict(); `Trainer.save` makes the
checkpoint from them and `Trainer.restore` gives each its own back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine import (
    allocator,
    checkpoint,
    data,
    device,
    distributed,
    lora,
    metrics,
    precision,
    remote,
)
from engine.chat_template import END, is_chat
from engine.chat_template import context as chat_context
from engine.contract import config, sizing
from engine.contract import events as p
from engine.contract.config import Config
from engine.contract.errors import UsageError, on_disk
from engine.contract.render import human
from engine.contract.rundir import RunDir
from engine.contract.runlock import RunLock
from engine.generate import generate
from engine.health import HealthGuard, Verdict
from engine.model import GPT
from engine.optim import build as build_optimizer
from engine.optim import set_step
from engine.schedule import describe_change
from engine.tokenizer import Tokenizer, from_spec
from engine.trainer.control import RunControl
from engine.trainer.eta import Eta
from engine.trainer.optim import ModelAndOptimizer
from engine.trainer.progress import Progress
from engine.trainer.reporting import Diverged, StepMeter, eval_event, evaluate
from engine.trainer.rng import RngState, seed_everything

__all__ = ["Progress", "Trainer", "train"]


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    console: metrics.Sink | None = None,
    quiet: bool = False,
    until: int | None = None,
    report_to: str | None = None,
    branch: bool = False,
) -> Progress:
    """Train per `cfg`; returns the final progress. `resume` is "" for the run's latest checkpoint.

    `until` stops after that step as a stop request would — checkpoint, then `done` — while the
    schedule still runs to `train.max_steps`, so a later `--resume` continues the same run.
    `report_to` is the studio's address: events go there too, and its commands are obeyed.
    `branch` makes `resume` (a checkpoint of another run) the start of a new run folder.
    """
    metrics.check_optional_sinks(cfg)  # a missing package fails now, not after preparing data
    allocator.keep_freed_memory()  # before the calibration, which times steps as a run has them
    calibrate = precision.training_calibration(cfg.model, cfg.train.batch_size)
    t = cfg.train
    runtime = device.pick(t.device, t.dtype, calibrate, t.matmul_precision)
    # the matmul precision is process-wide: set for the run, and put back for whoever called
    with distributed.start(runtime) as group, precision.matmul_precision(group.runtime.matmul):
        main = group.is_main  # only rank 0 talks to the studio and the console
        link = remote.connect(report_to) if report_to and main else None
        if console is None and not quiet and main:
            console = metrics.console_for()
        early = metrics.Reporter([s for s in (console, link) if s is not None and main])
        # one writer per run folder, from before the first byte is written to the end
        lock = RunLock(cfg.run_dir)
        try:
            if main:
                lock.acquire()
            trainer = Trainer(cfg, group, early, link, resume, branch)
        except BaseException as err:
            if link is not None:  # the console hears it from the command line's error line
                link.write(p.Error(message=str(err) if isinstance(err, UsageError) else repr(err)))
            early.close()
            lock.release()
            raise
        try:
            trainer.fit(until)
        finally:
            trainer.close()
            lock.release()
    return trainer.progress


class Trainer:
    """Everything one training run is made of, built once before the loop."""

    def __init__(
        self,
        cfg: Config,
        group: distributed.Group,
        early: metrics.Reporter,
        link: remote.StudioLink | None,
        resume: str | None = None,
        branch: bool = False,
    ) -> None:
        """Data, tokenizer, model, optimizer and loaders, restored from a checkpoint if resuming.

        Nothing is written to the run folder (its lock aside) until the run is known to fit."""
        run_dir = cfg.run_dir
        if (resume is None or branch) and group.is_main:
            _refuse_to_overwrite(run_dir)
        runtime = group.runtime
        seed_everything(cfg.train.seed)

        self.notes: list[str] = []  # warnings from building, said after the start event
        self.saver = checkpoint.CheckpointManager(
            run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best
        )
        if group.is_main:  # we hold the run's lock: its temporary files are dead writers'
            for path, size in self.saver.remove_stale():
                self.notes.append(
                    f"removed {path.name} ({human(size, 'B')}), left by a writer that was "
                    "killed mid-save"
                )
        restored = _load_resume(cfg, resume) if resume is not None else None
        # weights to fine-tune: a checkpoint, a run directory, or hf:PATH (a Hugging Face folder)
        base = checkpoint.load_weights(cfg.train.init_from) if cfg.train.init_from else None
        source = restored or base
        if source is None:  # a first answer before preparing data: the shape is the config's
            check_memory(cfg, runtime, group.world_size)
        tokenizer = from_spec(source["tokenizer"]) if source else None
        prepared, tokenizer = _prepare_data(cfg, tokenizer, early, group)
        if source:  # a checkpoint fixes the architecture
            model_cfg = checkpoint.model_config(source)
            differ = _model_differences(cfg, model_cfg)
            if differ and restored:
                raise UsageError(f"the config's model differs from the checkpoint's: {differ}")
            # fine-tuning: the weights bring their shape; say what was not used, unless the
            # config asked for no shape at all (presets/sft/chat.toml has no [model])
            if differ and cfg.model != config.ModelConfig():
                self.notes.append(
                    f"model shape from {cfg.train.init_from}, not the config: {differ}"
                )
            model_cfg.dropout = cfg.model.dropout
            model_cfg.activation_checkpointing = cfg.model.activation_checkpointing
            if tokenizer.vocab_size > model_cfg.vocab_size:  # the chat tokens need rows
                before = model_cfg.vocab_size
                model_cfg.vocab_size = sizing.padded_vocab(tokenizer.vocab_size)
                self.notes.append(
                    f"embedding grown from {before} to {model_cfg.vocab_size} rows for the "
                    "tokenizer's chat tokens"
                )
        else:
            model_cfg = sizing.resolve_model(cfg, tokenizer.vocab_size)
        cfg.model = model_cfg
        if restored and branch:
            self.notes.append(
                f"branched from {resume} at step {restored['progress']['step']}; that run is "
                "unchanged"
            )
        if restored:
            self.notes += _changes_since(restored, cfg)
        _check_prompts(cfg, tokenizer)
        check_memory(cfg, runtime, group.world_size, tokenizer.vocab_size)

        model = GPT(model_cfg)  # on the CPU, the same on every rank; Parallel places it
        self.lora: dict[str, Any] | None = None
        if cfg.lora.rank:
            self.lora = _adapt(cfg, model, base, restored, self.notes)
        elif source:
            if restored and isinstance(restored.get("lora"), dict):
                raise UsageError("--resume: the checkpoint is a LoRA run's; resume with its [lora]")
            weights = dict(source["model"])
            checkpoint.grow_vocab(weights, model_cfg.vocab_size, model_cfg.tie_embeddings)
            model.load_state_dict(weights)
        t = cfg.train
        group.seed(t.seed)
        parallel = distributed.Parallel(model, group, t.parallel)
        optimizer = build_optimizer(model, t)

        self.cfg, self.group, self.runtime, self.tokenizer = cfg, group, runtime, tokenizer
        self.model = model
        self.optim = ModelAndOptimizer(model, parallel, optimizer, runtime, compile=t.compile)
        self.train_loader, self.val_loader = data.make_loaders(
            cfg, prepared, tokenizer, runtime.device, group.rank, group.world_size
        )
        self.rng = RngState(runtime.device)
        self.progress = Progress()
        self.health = HealthGuard(t.spike_z, max_bad_steps=t.max_bad_steps)
        if restored:
            self.restore(restored)
        del source, restored, base

        self.reporter = metrics.Reporter([])  # the other ranks report nothing
        if group.is_main:
            with on_disk(run_dir, "writing the run folder"):
                run_dir.mkdir(parents=True, exist_ok=True)
                config.save(cfg, run_dir / "config.toml", overwrite=True)
                self.reporter = metrics.open_sinks(cfg, early.sinks)
        # any studio of ours may attach from now on (rank 0 listens; see engine.remote)
        self.endpoint = remote.open_control(run_dir) if group.is_main else None
        if self.endpoint is not None:
            self.reporter.sinks.append(self.endpoint)
        commands = remote.Commands(link, self.endpoint) if link or self.endpoint else None
        self.control = RunControl(commands, group, self.reporter)

    # --- the parts' state ------------------------------------------------------------------

    def save(self, val_loss: float | None = None) -> bool:
        """Every rank takes part: the weights and optimizer state as one process would hold
        them (gathered under FSDP), and each rank's data position and RNG; rank 0 writes.

        Weights holding NaN or infinity on any rank are never written: the kept checkpoints
        stay the good ones. Returns whether a checkpoint was written.
        """
        step = self.progress.step
        if not self.optim.weights_finite():
            self.reporter.emit(p.Log(str(checkpoint.NonFiniteWeights(step)), level="warning"))
            return False
        model_and_optimizer = self.optim.state_dict()
        ranks = self.group.gather(
            {"data": self.train_loader.state_dict(), "rng": self.rng.state_dict()}
        )
        if self.group.is_main:
            payload = checkpoint.pack(
                config=config.to_dict(self.cfg), tokenizer=self.tokenizer.spec(),
                model=model_and_optimizer["model"], optimizer=model_and_optimizer["optimizer"],
                progress=self.progress.state_dict(), ranks=ranks, lora=self.lora,
                health=self.health.state_dict(),
            )  # fmt: skip
            path, best = self.saver.save(payload, step, val_loss)
            self.reporter.emit(
                p.Checkpoint(step=step, path=str(path), best=best, val_loss=val_loss)
            )
        self.group.wait_for_main()
        return True

    def restore(self, state: dict[str, Any]) -> None:
        """Each part's own state back from a checkpoint (`checkpoint.load`'s current format)."""
        if state["optimizer"] is None or state["ranks"][0]["data"] is None:
            raise UsageError(
                "--resume: the checkpoint holds weights only, nothing to continue; "
                "fine-tune from it with --train.init_from=PATH instead"
            )
        self.optim.load_state_dict(state)
        mine = checkpoint.rank_part(state, self.group.rank, self.group.world_size)
        self.train_loader.load_state_dict(mine["data"])
        if mine["rng"] is not None:
            self.rng.load_state_dict(mine["rng"])
        self.progress.load_state_dict(state["progress"])
        self.health.load_state_dict(state.get("health") or {})

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> None:
        """Step, log, evaluate, sample, save — and between steps, obey the studio — to the end."""
        cfg, t, progress, control = self.cfg, self.cfg.train, self.progress, self.control
        world = self.group.world_size
        tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size * world
        peak = self.runtime.peak_flops * world if self.runtime.peak_flops else None
        self._announce(tokens_per_step)
        meter = StepMeter(
            tokens_per_step, self.model.flops_per_token() * tokens_per_step, peak, self._eta()
        )
        try:
            with control.signals(at_once=world == 1):
                while progress.step < t.max_steps and not control.stop:
                    lr = set_step(self.optim.optimizer, progress.step, t, self.health.lr_scale)
                    loss, verdict = self.optim.step(
                        self.train_loader, t.grad_accum, t.grad_clip, self.health
                    )
                    progress.step += 1
                    progress.tokens += tokens_per_step
                    meter.add(loss, verdict.ok)
                    if not verdict.ok:
                        self._report_skip(verdict)
                        if self.health.unhealthy:
                            self.recover()  # back to the last good checkpoint, or Diverged
                            meter.restart()
                            continue
                    if until is not None and progress.step >= until and not control.stop:
                        control.stop = "stopped"
                    self.obey(control.agree())  # pause, stop, save or sample, on every rank
                    last = progress.step == t.max_steps or bool(control.stop)
                    self._between_steps(meter, lr, last)
                    meter.end_extras()
            self.reporter.emit(p.Done(step=progress.step, reason=control.stop or "finished",
                                      elapsed_s=meter.elapsed()))  # fmt: skip
        except Diverged as err:
            self.reporter.emit(p.Error(message=str(err), step=err.step))
            raise UsageError(str(err)) from None
        except BaseException as err:
            self.reporter.emit(p.Error(message=f"{type(err).__name__}: {err}", step=progress.step))
            raise

    def _announce(self, tokens_per_step: int) -> None:
        cfg, t, world = self.cfg, self.cfg.train, self.group.world_size
        self.reporter.emit(p.Start(
            run=cfg.name, config=config.to_dict(cfg), params=self.model.num_params(),
            device=str(self.runtime.device), dtype=str(self.runtime.dtype).removeprefix("torch."),
            matmul_precision=self.runtime.matmul,
            max_steps=t.max_steps, tokens_per_step=tokens_per_step, world_size=world,
            resumed_from=self.progress.step, chat_tuned=is_chat(self.tokenizer),
        ))  # fmt: skip
        for a in config.adjustments(cfg):  # typed, so no reader matches a line of text
            self.reporter.emit(p.Adjusted(key=a.key, value=a.value, used=a.used, reason=a.reason))
        if self.runtime.why:
            self.reporter.emit(p.Log(self.runtime.why))
        for note in self.notes:
            self.reporter.emit(p.Log(note, level="warning"))
        if self.endpoint is not None:
            self.reporter.emit(p.Log(
                f"control: {self.endpoint.address} (attach: gpt-studio --attach {cfg.run_dir})"
            ))  # fmt: skip
        if world > 1:
            self.reporter.emit(p.Log(
                f"global batch: {t.batch_size} sequences x {t.grad_accum} micro-batches x {world} "
                f"processes = {t.batch_size * t.grad_accum * world} sequences, {tokens_per_step:,} "
                f"tokens per step ({self.optim.parallel.kind}, {cfg.model.block_size} tokens each)"
            ))  # fmt: skip

    def _eta(self) -> Eta:
        """What the ETA counts besides steps: the evaluations, samples and saves still due."""
        cfg, t = self.cfg, self.cfg.train
        intervals = {"save": config.checkpoint_interval(cfg)}
        if self.val_loader is not None:
            intervals["eval"] = t.eval_interval
        if t.sample_prompts:
            intervals["sample"] = config.sample_interval(t)
        # an evaluation batch is a forward pass of one micro-batch: about a third of its step
        return Eta(t.max_steps, intervals, {"eval": t.eval_steps / (3 * t.grad_accum)})

    def _between_steps(self, meter: StepMeter, lr: float, last: bool) -> None:
        """Log, evaluate, sample and save as their intervals say; then hold if paused.

        A signal is a request to be gone: its checkpoint comes right after the step's record,
        and no evaluation or sample delays it."""
        cfg, t, step = self.cfg, self.cfg.train, self.progress.step
        signalled = self.control.stop == "signal"
        if (step % cfg.log.interval == 0 or last) and meter.has_loss:
            record = meter.record(
                step, self.progress.tokens, lr, float(self.optim.last_norm), t.max_steps,
                self.runtime,
            )  # fmt: skip
            self.progress.losses.append(record.loss)
            self.reporter.emit(record)
        if signalled:
            self.save()
            return
        val_loss = None
        if self.val_loader is not None and (step % t.eval_interval == 0 or last):
            with meter.extra("eval"):
                val_loss = evaluate(self.model, self.val_loader, t.eval_steps, self.runtime)
            if math.isfinite(val_loss):
                self.reporter.emit(eval_event(step, val_loss))
            else:
                self.reporter.emit(p.Log(
                    f"step {step}: the validation loss is {val_loss}; not recorded",
                    level="warning",
                ))  # fmt: skip
                val_loss = None
        if (step % config.sample_interval(t) == 0 or last) and t.sample_prompts:
            with meter.extra("sample"):
                self.sample(t.sample_prompts, t.sample_tokens, seed=t.seed + step)
        if step % config.checkpoint_interval(cfg) == 0 or last:
            with meter.extra("save"):
                saved = self.save(val_loss)
            if not saved and last:
                raise Diverged(step, "the weights are not finite")
        if self.control.paused:  # after this step's records, so they show where it paused
            self.hold()
            if self.control.stop and not last:
                self.save()  # stopped while paused: the step is kept

    def _report_skip(self, verdict: Verdict) -> None:
        z = f", z-score {verdict.z:.1f}" if verdict.z else ""
        self.reporter.emit(p.Log(
            f"step {self.progress.step}: update skipped ({verdict.reason}{z}); "
            f"{self.health.bad_in_a_row} bad step(s) in a row", level="warning",
        ))  # fmt: skip

    def recover(self) -> None:
        """After `train.max_bad_steps` bad steps in a row: back to the last good checkpoint with
        a lower learning rate, or stop with a message (train.on_unhealthy, max_rollbacks)."""
        t, health, step = self.cfg.train, self.health, self.progress.step
        why = f"{health.bad_in_a_row} bad steps in a row by step {step}"
        if t.on_unhealthy == "stop":
            raise Diverged(step, why)
        if health.rollbacks >= t.max_rollbacks:
            raise Diverged(step, f"{why}, after {health.rollbacks} rollback(s)")
        if self.optim.parallel.kind == "fsdp":
            raise Diverged(step, f"{why} (rolling back is not supported under FSDP)")
        found = self.saver.latest() if self.group.is_main else None
        latest = self.group.broadcast(str(found) if found else "")
        if not latest:
            raise Diverged(step, f"{why}, and no checkpoint yet to roll back to")
        restored = checkpoint.load(latest, map_location="cpu")
        with torch.no_grad():
            self.model.load_state_dict(restored["model"])
        kept = health.state_dict()  # the guard's history and counts carry on, not the file's
        self.restore(restored)
        health.load_state_dict(kept)
        health.rolled_back(t.rollback_lr)
        self.reporter.emit(p.Log(
            f"{why}: rolled back to step {self.progress.step} ({Path(latest).name}) with the "
            f"learning rate x{health.lr_scale:g}; rollback {health.rollbacks} of "
            f"{t.max_rollbacks}", level="warning",
        ))  # fmt: skip

    def obey(self, commands: list[p.Command]) -> None:
        """Carry out the studio's commands between two steps, on every rank alike."""
        for command in commands:
            if self.control.apply(command, self.progress.step):
                continue
            if isinstance(command, p.Save):
                self.save()
            elif isinstance(command, p.SampleRequest):
                self._answer_sample(command)

    def hold(self) -> None:
        """Stay paused, still obeying save, sample and stop, until resumed, stopped or
        signalled (or the studio that paused us is gone, when nobody could resume us)."""
        while self.control.holding:
            self.obey(self.control.agree(wait=0.2))
        self.control.paused = False

    def sample(
        self,
        prompts: list[str],
        max_tokens: int,
        request_id: str = "",
        *,
        system: str = "",
        turns: Sequence[dict[str, str]] = (),
        **settings: Any,
    ) -> None:
        """Rank 0 writes a sample per prompt; under FSDP every rank helps gather the model.

        A chat model is asked as a user (after `system` and the earlier `turns`) and answers
        as the assistant, up to <|end|>; a base model continues the prompt."""
        model = self.optim.parallel.sampling_model()
        if model is None:
            return
        chat = is_chat(self.tokenizer)
        block = model.cfg.block_size
        room = block - min(max_tokens, block // 2)
        for prompt in prompts:
            context = prompt
            if chat:
                context = chat_context(
                    self.tokenizer, prompt, room=room, system=system, turns=turns
                )
                settings["stop"] = (END, self.tokenizer.EOT)
            with self.runtime.compute:
                text = generate(model, self.tokenizer, context, max_tokens, **settings)
            self.reporter.emit(
                p.Sample(step=self.progress.step, prompt=prompt, text=text, id=request_id)
            )

    def _answer_sample(self, request: p.SampleRequest) -> None:
        try:
            self.sample(
                [request.prompt], request.max_tokens, request.id, system=request.system,
                turns=request.turns, temperature=request.temperature, top_k=request.top_k,
                top_p=request.top_p, seed=None,
            )  # fmt: skip
        except UsageError as err:  # a prompt the tokenizer cannot encode: the run goes on
            self._refuse_sample(request, str(err))
        except Exception as err:  # a sample is never worth the run (out of memory, say)
            text = (str(err) or type(err).__name__).splitlines()[0][:300]
            self._refuse_sample(request, f"failed: {text}")

    def _refuse_sample(self, request: p.SampleRequest, why: str) -> None:
        """Say why in the log, and answer the question with the reason, so the asker stops
        waiting."""
        self.reporter.emit(p.Log(f"sample {request.id}: {why}", level="warning"))
        self.reporter.emit(p.Sample(step=self.progress.step, prompt=request.prompt, text="",
                                    id=request.id, error=why))  # fmt: skip

    def close(self) -> None:
        self.reporter.close()
        self.train_loader.close()
        if self.val_loader is not None:
            self.val_loader.close()


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


def _adapt(
    cfg: Config,
    model: GPT,
    base: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    notes: list[str],
) -> dict[str, Any]:
    """The frozen init_from weights with adapters on them (restored when resuming); returns
    the settings a LoRA checkpoint stores, with the reference to its base."""
    assert base is not None, "config validation asks for train.init_from with lora.rank"
    weights = {k: v for k, v in base["model"].items() if ".lora_" not in k}
    checkpoint.grow_vocab(weights, model.cfg.vocab_size, model.cfg.tie_embeddings)
    model.load_state_dict(weights)
    settings = cfg.lora
    n = lora.apply(model, settings.rank, settings.alpha, settings.dropout, settings.targets)
    if restored:
        model.load_state_dict(restored["model"], strict=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes.append(
        f"LoRA rank {settings.rank} on {n} layers: {trainable:,} of {model.num_params():,} "
        "parameters train"
    )
    return {
        **config.to_dict(cfg)["lora"],
        "base": checkpoint.base_reference(cfg.train.init_from),
    }


def _refuse_to_overwrite(run_dir: Path) -> None:
    held = RunDir(run_dir).held()
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


def check_memory(
    cfg: Config, runtime: device.Runtime, world_size: int, vocab: int | None = None
) -> None:
    """Refuse, before allocating anything, a run whose own memory estimate exceeds what the
    device has; `train.check_memory = false` lets someone who knows better try anyway."""
    if not cfg.train.check_memory:
        return
    have = device.memory_bytes(runtime.device)
    need = sizing.memory_estimate(cfg, vocab, world_size)
    by_products = precision.attends_by_products(runtime.device, runtime.matmul)
    if by_products:
        need["attention scores"] = sizing.attention_score_bytes(cfg.model, cfg.train.batch_size)
        need["total"] += need["attention scores"]
    if have is None or need["total"] <= have:
        return
    parts = ", ".join(f"{k} {human(v, 'B')}" for k, v in need.items() if k != "total" and v)
    raise UsageError(
        f"this run needs about {human(need['total'], 'B')} per device by its estimate ({parts}), "
        f"but {runtime.device} has {human(have, 'B')}; lower model.n_layer, model.n_embd or "
        "train.batch_size (raise train.grad_accum to keep the batch), "
        + ("or --train.matmul_precision=highest (flash attention keeps no scores), "
           if by_products else "")
        + "or set --train.check_memory=false to try anyway"
    )  # fmt: skip


SCHEDULE_KEYS = ("max_steps", "lr", "min_lr", "lr_schedule", "warmup_steps", "decay_fraction")


def _changes_since(restored: dict[str, Any], cfg: Config) -> list[str]:
    """What a resumed (or branched) run does differently from its checkpoint, said at start:
    every changed setting, and what a changed schedule does to the learning rate."""
    saved = restored.get("config")
    if not isinstance(saved, dict):
        return []
    changed = [
        (k, old, new)
        for k, old, new in config.differences(saved, config.to_dict(cfg))
        if k not in ("name", "out_dir") and not k.startswith("model.") and old is not None
    ]
    if not changed:
        return []
    notes = [
        "settings changed since the checkpoint: "
        + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
    ]
    if any(k in {f"train.{s}" for s in SCHEDULE_KEYS} for k, _, _ in changed):
        try:
            before = config.from_dict(saved, origin="the checkpoint's config").train
        except UsageError:
            return notes
        notes.append(describe_change(int(restored["progress"]["step"]), before, cfg.train))
    return notes


def branch_source(spec: str, cfg: Config) -> Path:
    """The checkpoint `RUN@STEP` names: RUN a run folder (or a run name under out_dir), STEP a
    kept step, `latest` or `best`."""
    run, at, step = spec.rpartition("@")
    if not at or not run or not step:
        raise UsageError(f"--branch {spec!r}: expected RUN@STEP, e.g. --branch tiny@2000")
    folder = Path(run) if Path(run).is_dir() else Path(cfg.out_dir) / run
    if not folder.is_dir():
        raise UsageError(f"--branch {spec!r}: no run folder {run} (nor {folder})")
    if folder.resolve() == cfg.run_dir.resolve():
        raise UsageError(
            f"--branch {spec!r}: the branch needs a folder of its own; add --name=NEW_NAME"
        )
    saver = checkpoint.CheckpointManager(folder)
    found = {"latest": saver.latest(), "best": saver.best()}.get(step)
    if found is None and step.isdigit():
        found = next((f for f in saver.step_files() if int(f.stem[5:]) == int(step)), None)
    if found is None:
        kept = ", ".join(str(int(f.stem[5:])) for f in saver.step_files()) or "none"
        raise UsageError(
            f"--branch {spec!r}: {folder} keeps no checkpoint at {step}; kept steps: {kept} "
            "(or latest, best)"
        )
    return found
