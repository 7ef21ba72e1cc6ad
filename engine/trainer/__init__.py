"""The Trainer: build, resume, then step, log, evaluate, sample, save — calling named parts.

    data loaders       engine.data            batches; their position is part of a checkpoint
    model+optimizer    trainer.optim          the step; weights, optimizer and loss-scaler state
    LR schedule        engine.schedule        a pure function of the step: nothing to save
    run control        trainer.control        studio commands and signals, agreed across ranks
    reporting          trainer.reporting      step, eval and sample records to engine.metrics
    checkpointing      engine.checkpoint      the one writer and reader of the payload
    RNG state          trainer.rng            every generator a step touches
    progress           trainer.progress       step and tokens

Each part that holds state has state_dict()/load_state_dict(); `Trainer.save` makes the
checkpoint from them and `Trainer.restore` gives each its own back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import checkpoint, data, device, distributed, metrics, remote
from engine.contract import config, sizing
from engine.contract import events as p
from engine.contract.config import Config
from engine.contract.errors import UsageError
from engine.contract.rundir import RunDir
from engine.generate import generate
from engine.model import GPT
from engine.optim import build as build_optimizer
from engine.optim import set_step
from engine.tokenizer import Tokenizer, from_spec
from engine.trainer.control import RunControl
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
) -> Progress:
    """Train per `cfg`; returns the final progress. `resume` is "" for the run's latest checkpoint.

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
            trainer = Trainer(cfg, group, early, link, resume)
        except BaseException as err:
            if link is not None:  # the console hears it from the command line's error line
                link.write(p.Error(message=str(err) if isinstance(err, UsageError) else repr(err)))
            early.close()
            raise
        try:
            trainer.fit(until)
        finally:
            trainer.close()
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
    ) -> None:
        """Data, tokenizer, model, optimizer and loaders, restored from a checkpoint if resuming."""
        run_dir = cfg.run_dir
        if resume is None and group.is_main:
            _refuse_to_overwrite(run_dir)
        runtime = group.runtime
        device.configure_cuda()
        seed_everything(cfg.train.seed)

        self.notes: list[str] = []  # warnings from building, said after the start event
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
                self.notes.append(
                    f"model shape from {cfg.train.init_from}, not the config: {differ}"
                )
            model_cfg.dropout = cfg.model.dropout
            model_cfg.activation_checkpointing = cfg.model.activation_checkpointing
        else:
            model_cfg = sizing.resolve_model(cfg, tokenizer.vocab_size)
        cfg.model = model_cfg
        _check_prompts(cfg, tokenizer)

        model = GPT(model_cfg)  # on the CPU, the same on every rank; Parallel places it
        if source:
            model.load_state_dict(source["model"])
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
        if restored:
            self.restore(restored)
        del source, restored, base

        self.reporter = metrics.Reporter([])  # the other ranks report nothing
        if group.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config.save(cfg, run_dir / "config.toml", overwrite=True)
            self.reporter = metrics.open_sinks(cfg, early.sinks)
        self.saver = checkpoint.CheckpointManager(
            run_dir, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best
        )
        self.control = RunControl(link, group, self.reporter)

    # --- the parts' state ------------------------------------------------------------------

    def save(self, val_loss: float | None = None) -> None:
        """Every rank takes part: the weights and optimizer state as one process would hold
        them (gathered under FSDP), and each rank's data position and RNG; rank 0 writes."""
        step = self.progress.step
        model_and_optimizer = self.optim.state_dict()
        ranks = self.group.gather(
            {"data": self.train_loader.state_dict(), "rng": self.rng.state_dict()}
        )
        if self.group.is_main:
            payload = checkpoint.pack(
                config=config.to_dict(self.cfg), tokenizer=self.tokenizer.spec(),
                model=model_and_optimizer["model"], optimizer=model_and_optimizer["optimizer"],
                progress=self.progress.state_dict(), ranks=ranks,
            )  # fmt: skip
            path, best = self.saver.save(payload, step, val_loss)
            self.reporter.emit(
                p.Checkpoint(step=step, path=str(path), best=best, val_loss=val_loss)
            )
        self.group.wait_for_main()

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

    # --- the loop ----------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> None:
        """Step, log, evaluate, sample, save — and between steps, obey the studio — to the end."""
        cfg, t, progress, control = self.cfg, self.cfg.train, self.progress, self.control
        world = self.group.world_size
        tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size * world
        peak = self.runtime.peak_flops * world if self.runtime.peak_flops else None
        self._announce(tokens_per_step)
        meter = StepMeter(tokens_per_step, self.model.flops_per_token() * tokens_per_step, peak)
        try:
            with control.signals(at_once=world == 1):
                while progress.step < t.max_steps and not control.stop:
                    lr = set_step(self.optim.optimizer, progress.step, t)
                    meter.add(self.optim.step(self.train_loader, t.grad_accum, t.grad_clip))
                    progress.step += 1
                    progress.tokens += tokens_per_step
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
            max_steps=t.max_steps, tokens_per_step=tokens_per_step, world_size=world,
            resumed_from=self.progress.step,
        ))  # fmt: skip
        for note in self.notes:
            self.reporter.emit(p.Log(note, level="warning"))
        if world > 1:
            self.reporter.emit(p.Log(
                f"global batch: {t.batch_size} sequences x {t.grad_accum} micro-batches x {world} "
                f"processes = {t.batch_size * t.grad_accum * world} sequences, {tokens_per_step:,} "
                f"tokens per step ({self.optim.parallel.kind}, {cfg.model.block_size} tokens each)"
            ))  # fmt: skip

    def _between_steps(self, meter: StepMeter, lr: float, last: bool) -> None:
        """Log, evaluate, sample and save as their intervals say; then hold if paused."""
        cfg, t, step = self.cfg, self.cfg.train, self.progress.step
        if step % cfg.log.interval == 0 or last:
            # the one sync per interval; the mean over all ranks' micro-batches
            mean_loss = self.group.mean(meter.window_loss()).item() / meter.window_steps
            record = meter.record(
                step, self.progress.tokens, lr, float(self.optim.last_norm), mean_loss,
                t.max_steps, self.runtime,
            )  # fmt: skip
            self.progress.losses.append(mean_loss)
            self.reporter.emit(record)
        val_loss = None
        if self.val_loader is not None and (step % t.eval_interval == 0 or last):
            val_loss = evaluate(self.model, self.val_loader, t.eval_steps, self.runtime)
            self.reporter.emit(eval_event(step, val_loss))
        if (step % t.sample_interval == 0 or last) and t.sample_prompts:
            self.sample(t.sample_prompts, t.sample_tokens, seed=t.seed + step)
        if step % cfg.checkpoint.interval == 0 or last:
            self.save(val_loss)
        if self.control.paused:  # after this step's records, so they show where it paused
            self.hold()
            if self.control.stop and not last:
                self.save()  # stopped while paused: the step is kept

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
        self, prompts: list[str], max_tokens: int, request_id: str = "", **settings: Any
    ) -> None:
        """Rank 0 writes a sample per prompt; under FSDP every rank helps gather the model."""
        model = self.optim.parallel.sampling_model()
        if model is None:
            return
        for prompt in prompts:
            with self.runtime.autocast:
                text = generate(model, self.tokenizer, prompt, max_tokens, **settings)
            self.reporter.emit(
                p.Sample(step=self.progress.step, prompt=prompt, text=text, id=request_id)
            )

    def _answer_sample(self, request: p.SampleRequest) -> None:
        try:
            self.sample(
                [request.prompt], request.max_tokens, request.id, temperature=request.temperature,
                top_k=request.top_k, top_p=request.top_p, seed=None,
            )  # fmt: skip
        except UsageError as err:  # a prompt the tokenizer cannot encode: the run goes on
            self.reporter.emit(p.Log(f"sample {request.id}: {err}", level="warning"))

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
