import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import wait_until

from engine import checkpoint, device, metrics
from engine.contract import config
from engine.contract import events as p
from engine.contract.errors import UsageError
from engine.train import train

pytestmark = pytest.mark.slow  # these tests train models

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "log",
    "sun",
    "moon",
    "and",
    "then",
    "quickly",
    "slowly",
]


def corpus(path: Path, docs: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(docs)
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def tiny_config(tmp_path: Path, **overrides: object) -> config.Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    text = corpus(tmp_path / "corpus.txt")
    cfg = config.Config(name="t", out_dir=str(tmp_path / "runs"))
    cfg.model = config.ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
    cfg.tokenizer = config.TokenizerConfig(kind="char")
    cfg.data = config.DataConfig(
        source=str(text), val_fraction=0.1, cache_dir=str(tmp_path / "cache")
    )
    cfg.train = config.TrainConfig(
        device="cpu", batch_size=8, max_steps=30, lr=3e-3, min_lr=3e-4, warmup_steps=5,
        eval_interval=10, eval_steps=4, sample_interval=15, sample_prompts=["the "],
        sample_tokens=20, seed=7,
    )  # fmt: skip
    cfg.checkpoint = config.CheckpointConfig(interval=10, keep_last=2)
    cfg.log = config.LogConfig(interval=1)
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, cfg.train.max_steps)
    return config.validate(cfg)


def events(cfg: config.Config) -> list[p.Event]:
    return metrics.read_events(cfg.run_dir / "metrics.jsonl")


@pytest.mark.slow
def test_a_short_run_warms_up_over_part_of_it_and_samples_and_saves_as_it_goes(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=6, train__sample_interval=0,
                      checkpoint__interval=0, train__eval_interval=100)  # fmt: skip
    cfg.train.warmup_steps = 50  # longer than the run: cut, not refused
    train(cfg, quiet=True)
    seen = events(cfg)
    [note] = [e for e in seen if isinstance(e, p.Adjusted)]
    assert (note.key, note.value, note.used) == ("train.warmup_steps", 50, 0)
    assert [e.step for e in seen if isinstance(e, p.Sample)] == [2, 4, 6]  # one prompt
    assert {e.step for e in seen if isinstance(e, p.Checkpoint)} == {2, 4, 6}


def test_loss_decreases_on_a_tiny_config(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=60)
    state = train(cfg, quiet=True)
    assert state.step == 60
    first, last = sum(state.losses[:5]) / 5, sum(state.losses[-5:]) / 5
    assert last < first - 0.5
    evals = [e for e in events(cfg) if isinstance(e, p.Eval)]
    assert evals[-1].val_loss < evals[0].val_loss


def test_metrics_records_carry_the_fields_the_studio_needs(tmp_path):
    cfg = tiny_config(tmp_path, log__csv=True)
    train(cfg, quiet=True)
    records = [
        json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert {"step", "eval", "sample", "checkpoint"} <= set(kinds)
    step = next(r for r in records if r["type"] == "step")
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mfu", "mem_gb"):
        assert key in step
    assert step["mfu"] is None  # no known peak on a CPU
    assert step["mem_gb"] > 0
    ev = next(r for r in records if r["type"] == "eval")
    assert ev["ppl"] == pytest.approx(2.718281828 ** ev["val_loss"], rel=1e-6)
    assert sum(k == "step" for k in kinds) == 30
    assert "--- step 15" in (cfg.run_dir / "samples.txt").read_text()
    assert (cfg.run_dir / "metrics.csv").read_text().startswith("type,step,loss")
    assert config.load(cfg.run_dir / "config.toml").train.max_steps == 30


# the recipe: Muon with its momentum warming up across the resume, WSD, and every model switch
MUON = dict(
    train__optimizer="muon", train__muon_momentum_warmup=20, train__lr_schedule="wsd",
    model__pos="rope", model__norm="rmsnorm", model__norm_affine=False, model__mlp="relu2",
    model__qk_norm=True, model__zero_init=True, model__logit_softcap=15.0,
    model__tie_embeddings=False,
)  # fmt: skip


@pytest.mark.parametrize("recipe", [{}, MUON], ids=["adamw", "muon"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, recipe):
    full = tiny_config(tmp_path / "a", model__dropout=0.1, **recipe)
    whole = train(full, quiet=True).losses

    half = tiny_config(tmp_path / "b", model__dropout=0.1, **recipe)
    first = train(half, quiet=True, until=15).losses
    second = train(half, resume="", quiet=True).losses
    assert len(first) + len(second) == 30
    assert first + second == pytest.approx(whole, abs=0, rel=0)


def test_muon_recipe_learns_faster_than_adamw_at_its_own_rates(tmp_path):
    classic = train(tiny_config(tmp_path / "a"), quiet=True).losses
    recipe = train(tiny_config(tmp_path / "b", **MUON), quiet=True).losses
    assert sum(recipe[-5:]) < sum(classic[-5:])


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=3)
    train(cfg, quiet=True)
    before = (cfg.run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(UsageError, match=r"already holds a run.*--resume.*--name"):
        train(cfg, quiet=True)
    assert (cfg.run_dir / "metrics.jsonl").read_bytes() == before


def test_resume_without_checkpoints_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(UsageError, match="has no checkpoints to resume from"):
        train(cfg, resume="", quiet=True)


def test_checkpoints_hold_everything_needed_to_continue(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=20)
    train(cfg, quiet=True)
    saver = checkpoint.CheckpointManager(cfg.run_dir)
    assert [f.name for f in saver.step_files()] == ["step_00000010.pt", "step_00000020.pt"]
    state = checkpoint.load(saver.latest())
    assert state["format_version"] == checkpoint.FORMAT_VERSION
    assert set(state) == {
        "format_version", "config", "tokenizer", "model", "optimizer", "progress",
        "world_size", "ranks", "health",
    }  # fmt: skip
    assert state["health"]["skipped"] == 0 and state["health"]["lr_scale"] == 1.0
    assert set(state["optimizer"]) == {"adamw", "scaler"} and state["world_size"] == 1
    assert set(state["ranks"][0]) == {"data", "rng"}
    assert state["progress"] == {
        "step": 20,
        "tokens": 20 * cfg.train.batch_size * cfg.train.grad_accum * 32,
    }
    assert saver.best() is not None


def test_fine_tuning_starts_from_weights_with_a_fresh_optimizer(tmp_path):
    base = tiny_config(tmp_path / "base", train__max_steps=40)
    trained = train(base, quiet=True).losses
    tune = tiny_config(tmp_path / "tune", train__max_steps=5)
    tune.train.init_from = str(base.run_dir)
    tuned = train(tune, quiet=True)
    assert tuned.step == 5  # steps count from zero again
    assert tuned.losses[0] < trained[0] - 0.5  # but the weights were already trained


def test_a_bad_sample_prompt_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path, train__sample_prompts=["Zebra"])
    with pytest.raises(UsageError, match=r"train.sample_prompts: 'Zebra'"):
        train(cfg, quiet=True)
    assert not (cfg.run_dir / "metrics.jsonl").exists()


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed"
)
def test_an_enabled_sink_that_is_not_installed_fails_at_start(tmp_path):
    cfg = tiny_config(tmp_path, log__wandb=True)
    with pytest.raises(
        UsageError, match=r"log.wandb = true, but the wandb package is not installed"
    ):
        train(cfg, quiet=True)


def test_device_auto_never_defaults_to_bf16_on_cpu():
    runtime = device.pick("cpu", "auto")
    assert runtime.device.type == "cpu" and runtime.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(UsageError, match=r"train.device = 'cuda', but no CUDA GPU is visible"):
        device.pick("cuda", "auto")


def test_bf16_autocast_trains_on_cpu(tmp_path):
    cfg = tiny_config(tmp_path, train__dtype="bfloat16", train__max_steps=3)
    state = train(cfg, quiet=True)
    assert state.step == 3
    start = next(e for e in events(cfg) if isinstance(e, p.Start))
    assert start.dtype == "bfloat16"


def test_sigint_saves_a_checkpoint_and_exits_0(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=100000, checkpoint__interval=100000)
    cfg_path = config.save(cfg, tmp_path / "run.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.train", str(cfg_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    log = cfg.run_dir / "metrics.jsonl"

    def stepping() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        return log.exists() and '"type": "step"' in log.read_text()

    wait_until(stepping, 180, "step record")  # generous: a loaded machine starts torch slowly
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    done = [e for e in events(cfg) if isinstance(e, p.Done)]
    assert done and done[-1].reason == "signal"
    latest = checkpoint.CheckpointManager(cfg.run_dir).latest()
    assert latest is not None and checkpoint.load(latest)["progress"]["step"] == done[-1].step
    assert "done at step" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_uses_bf16_compile_pinned_batches_and_resumes(tmp_path):
    cfg = tiny_config(tmp_path, train__device="cuda", train__compile=True, train__max_steps=20)
    state = train(cfg, quiet=True, until=10)
    start = next(e for e in events(cfg) if isinstance(e, p.Start))
    assert start.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    steps = [e for e in events(cfg) if isinstance(e, p.Step)]
    assert steps[-1].mem_gb > 0 and all(math.isfinite(e.loss) for e in steps)
    assert steps[-1].mfu is None or 0 < steps[-1].mfu < 1
    resumed = train(cfg, resume="", quiet=True)
    assert state.step == 10 and resumed.step == 20


def test_resume_refuses_a_config_whose_model_changed(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=4)
    train(cfg, quiet=True)
    cfg.model.n_layer = 3
    cfg.train.max_steps = 8
    with pytest.raises(UsageError, match=r"model.n_layer = 3 \(checkpoint: 2\)"):
        train(cfg, resume="", quiet=True)
