"""Training on two processes under torchrun, with gloo on the CPU: the losses of one process with
the same global batch, checkpoints that resume on one process, FSDP equal to DDP, LoRA under
both, a failing rank that ends the job, and stops, pauses and studio commands that reach every
rank."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import wait_until
from test_remote import FakeStudio, of
from test_train import MUON, WORDS, events, tiny_config

from engine import checkpoint
from engine.contract import config
from engine.contract import events as p
from engine.data import sources
from engine.data.streaming import StreamingLoader
from engine.model import GPT
from engine.tokenizer import build_tokenizer
from engine.train import train

ROOT = Path(__file__).resolve().parent.parent
STEPS, HALF = 8, 4  # every run checkpoints at HALF and at the end

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="needs torch.distributed with gloo",
    ),
    pytest.mark.slow,  # every test here trains under torchrun
]


def torchrun(cfg_path: Path, *args: str, **popen: object) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 -m engine.train CONFIG ARGS` on this checkout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "engine.train", str(cfg_path), *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a torchrun job; its output, stdout and stderr together."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return out


def run_two(cfg_path: Path, *args: str) -> str:
    proc = torchrun(cfg_path, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = finish(proc)
    assert proc.returncode == 0, out
    return out


def run_events(cfg: config.Config, name: str) -> list[p.Event]:
    return events(config.Config(name=name, out_dir=cfg.out_dir))


def losses(cfg: config.Config, name: str) -> list[float]:
    return [e.loss for e in run_events(cfg, name) if isinstance(e, p.Step)]


def one_process(cfg: config.Config, name: str) -> config.Config:
    """The same run as a single process: the whole global batch in one micro-batch."""
    single = config.loads(config.dumps(cfg))
    single.name = name
    single.train.batch_size = cfg.train.batch_size * cfg.train.grad_accum * 2
    single.train.grad_accum = 1
    return single


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A tiny config for 2 ranks x 2 sequences x 2 micro-batches, and its reference: one
    process x 8 sequences, trained in this process."""
    folder = tmp_path_factory.mktemp("two")
    cfg = tiny_config(
        folder, train__max_steps=STEPS, train__batch_size=2, train__grad_accum=2,
        checkpoint__interval=HALF, checkpoint__keep_last=5,
    )  # fmt: skip
    config.save(cfg, folder / "run.toml")
    reference = train(one_process(cfg, "single"), quiet=True).losses
    return cfg, folder / "run.toml", reference


@pytest.fixture(scope="module")
def ddp(two):
    _, path, _ = two
    return run_two(path, "--name=ddp")


@pytest.fixture(scope="module")
def fsdp(two):
    _, path, _ = two
    return run_two(path, "--name=fsdp", "--train.parallel=fsdp")


def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(two, ddp):
    cfg, _, reference = two
    got = losses(cfg, "ddp")
    assert len(got) == STEPS
    assert got == pytest.approx(reference, abs=1e-5, rel=0)
    starts = [e for e in run_events(cfg, "ddp") if isinstance(e, p.Start)]
    assert len(starts) == 1  # only rank 0 writes metrics
    assert starts[0].world_size == 2
    assert starts[0].tokens_per_step == 2 * 2 * 2 * cfg.model.block_size
    assert "global batch: 2 sequences x 2 micro-batches x 2 processes = 8 sequences" in ddp
    # rank 0 prepared the data; rank 1 took its tokenizer and found the same dataset
    assert len(list((Path(cfg.data.cache_dir) / "datasets").iterdir())) == 1


def test_a_two_process_checkpoint_resumes_on_one_process(two, ddp):
    cfg, _, reference = two
    saved = Path(cfg.out_dir) / "ddp" / "checkpoints" / f"step_{HALF:08d}.pt"
    state = checkpoint.load(saved)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert set(state["model"]) == set(
        GPT(config.ModelConfig(**state["config"]["model"])).state_dict()
    )
    resumed = train(one_process(cfg, "resumed-ddp"), resume=str(saved), quiet=True).losses
    assert resumed == pytest.approx(reference[HALF:], abs=1e-5, rel=0)


def test_fsdp_matches_ddp_and_its_checkpoint_resumes_on_one_process(two, ddp, fsdp):
    cfg, _, reference = two
    assert losses(cfg, "fsdp") == pytest.approx(losses(cfg, "ddp"), abs=1e-5, rel=0)
    saved = Path(cfg.out_dir) / "fsdp" / "checkpoints" / f"step_{HALF:08d}.pt"
    state = checkpoint.load(saved)
    assert sorted(adamw := state["optimizer"]["adamw"]["state"]) == list(range(len(adamw)))
    resumed = train(one_process(cfg, "resumed-fsdp"), resume=str(saved), quiet=True).losses
    assert resumed == pytest.approx(reference[HALF:], abs=1e-5, rel=0)
    assert "sample at step 8" in fsdp  # gathered from the shards onto rank 0


@pytest.fixture(scope="module")
def two_muon(tmp_path_factory):
    """The Muon recipe on 2 ranks under DDP and under FSDP, and on one process."""
    folder = tmp_path_factory.mktemp("two-muon")
    cfg = tiny_config(
        folder, train__max_steps=STEPS, train__batch_size=2, train__grad_accum=2,
        checkpoint__interval=HALF, checkpoint__keep_last=5, **MUON,
    )  # fmt: skip
    config.save(cfg, folder / "run.toml")
    reference = train(one_process(cfg, "single"), quiet=True).losses
    run_two(folder / "run.toml", "--name=ddp")
    run_two(folder / "run.toml", "--name=fsdp", "--train.parallel=fsdp")
    return cfg, reference


def test_muon_under_ddp_and_fsdp_gives_the_losses_of_one_process(two_muon):
    cfg, reference = two_muon
    assert losses(cfg, "ddp") == pytest.approx(reference, abs=1e-4, rel=0)
    # FSDP gathers each sharded matrix for Newton-Schulz: the same step as one process
    assert losses(cfg, "fsdp") == pytest.approx(reference, abs=1e-4, rel=0)


def test_a_sharded_muon_checkpoint_resumes_on_one_process(two_muon):
    cfg, reference = two_muon
    saved = Path(cfg.out_dir) / "fsdp" / "checkpoints" / f"step_{HALF:08d}.pt"
    resumed = train(one_process(cfg, "resumed-fsdp"), resume=str(saved), quiet=True).losses
    assert resumed == pytest.approx(reference[HALF:], abs=1e-4, rel=0)


@pytest.fixture(scope="module")
def two_lora(two, ddp):
    """LoRA adapters on the DDP run's weights: on one process, and on 2 ranks under DDP and FSDP."""
    cfg, path, _ = two
    tuned = config.loads(config.dumps(cfg))
    tuned.train.init_from = str(Path(cfg.out_dir) / "ddp")
    tuned.lora = config.LoraConfig(rank=2, alpha=4.0, targets=["attn.qkv", "mlp.fc"])
    lora_path = config.save(tuned, path.parent / "lora.toml")
    reference = train(one_process(tuned, "lora-single"), quiet=True).losses
    run_two(lora_path, "--name=lora-ddp")
    fsdp = run_two(lora_path, "--name=lora-fsdp", "--train.parallel=fsdp")
    return tuned, reference, fsdp


def test_lora_under_ddp_and_fsdp_trains_only_the_adapters_as_one_process_does(two_lora):
    cfg, reference, fsdp = two_lora
    assert losses(cfg, "lora-ddp") == pytest.approx(reference, abs=1e-5, rel=0)
    assert losses(cfg, "lora-fsdp") == pytest.approx(reference, abs=1e-5, rel=0)
    assert "sample at step 8" in fsdp  # the adapters merged into the copy gathered for sampling
    for name in ("lora-ddp", "lora-fsdp"):
        saved = checkpoint.load(Path(cfg.out_dir) / name / "checkpoints" / f"step_{HALF:08d}.pt")
        assert sorted(saved["model"]) == sorted(
            f"blocks.{i}.{t}.lora_{ab}" for i in range(2) for t in ("attn.qkv", "mlp.fc")
            for ab in "AB"
        )  # fmt: skip
        assert len(saved["optimizer"]["adamw"]["state"]) == len(saved["model"])


def test_a_sharded_lora_checkpoint_resumes_on_one_process(two_lora):
    cfg, reference, _ = two_lora
    saved = Path(cfg.out_dir) / "lora-fsdp" / "checkpoints" / f"step_{HALF:08d}.pt"
    resumed = train(one_process(cfg, "lora-resumed"), resume=str(saved), quiet=True).losses
    assert resumed == pytest.approx(reference[HALF:], abs=1e-5, rel=0)


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    """Rank 1 streams a .jsonl file with a broken line; rank 0's file is fine."""
    folder = tmp_path / "src"
    folder.mkdir()
    rng = random.Random(0)
    for name in ("a.jsonl", "b.jsonl"):
        lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(30))})
                 for _ in range(200)]  # fmt: skip
        (folder / name).write_text("\n".join(lines) + "\n")
    cfg = tiny_config(
        tmp_path, train__max_steps=5, train__sample_prompts=[], data__val_fraction=0.0
    )
    cfg.data.source, cfg.data.include, cfg.data.streaming = str(folder), "*.jsonl", True
    cfg.tokenizer = config.TokenizerConfig(kind="tiktoken", name="cl100k_base")  # nothing to train
    rank_1 = StreamingLoader(
        sources.resolve(cfg.data), build_tokenizer("tiktoken", name="cl100k_base"), "train",
        batch_size=8, block_size=32, val_fraction=0.0, seed=cfg.train.seed, rank=1, world_size=2,
    )  # fmt: skip
    bad = Path(rank_1.units_for(0)[0].path)
    bad.write_text('{"text": "fine"}\n{not json\n' + bad.read_text())
    path = config.save(cfg, tmp_path / "run.toml")

    proc = torchrun(path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = finish(proc, timeout=120)  # a rank left waiting for the failed one would hang here
    assert proc.returncode != 0
    assert f"error: rank 1 of 2: {bad}:2: not valid JSON" in out


def _workers(agent: int) -> dict[int, int]:
    """The pid of each rank torchrun's agent started, by rank (Linux's /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(
                item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item
            )  # fmt: skip
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers through /proc")
def test_a_signal_to_rank_0_stops_every_rank_at_the_same_step(tmp_path):
    cfg = tiny_config(tmp_path, train__max_steps=100000, checkpoint__interval=100000)
    path = config.save(cfg, tmp_path / "run.toml")
    proc = torchrun(path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = cfg.run_dir / "metrics.jsonl"
        wait_until(lambda: log.exists() and '"type": "step"' in log.read_text(), 120, "step record")
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}
        os.kill(workers[0], signal.SIGTERM)  # rank 1 hears of it only from rank 0
        out = finish(proc, timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out  # both ranks ended cleanly: neither was left waiting
    done = [e for e in events(cfg) if isinstance(e, p.Done)]
    assert done and done[-1].reason == "signal"
    latest = checkpoint.CheckpointManager(cfg.run_dir).latest()
    assert latest is not None and checkpoint.load(latest)["progress"]["step"] == done[-1].step


def test_the_studio_talks_to_rank_0_and_every_rank_obeys(tmp_path):
    """Under FSDP, where sampling and saving need every rank: pause, sample, save, resume,
    stop."""
    cfg = tiny_config(tmp_path, train__max_steps=100000, checkpoint__interval=100000,
                      train__parallel="fsdp")  # fmt: skip
    path = config.save(cfg, tmp_path / "run.toml")
    studio = FakeStudio(tmp_path)
    proc = torchrun(path, "--report-to", studio.address, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)  # fmt: skip
    try:
        studio.accept()
        assert studio.until(of("start"))["world_size"] == 2
        studio.until(of("step"))
        studio.send(p.encode(p.Pause()))
        at = studio.until(of("paused"))["step"]
        # each answer is a round trip every rank took part in (FSDP gathers the weights to
        # sample and to save), so each proves the ranks still hold at the paused step
        studio.send(p.encode(p.SampleRequest(prompt="the ", max_tokens=8, id="q1")))
        assert studio.until(of("sample", id="q1"))["step"] == at
        studio.send(p.encode(p.Save()))
        assert studio.until(of("checkpoint"))["step"] == at
        studio.send(p.encode(p.SampleRequest(prompt="a ", max_tokens=4, id="q2")))
        assert studio.until(of("sample", id="q2"))["step"] == at
        assert max(m["step"] for m in studio.messages if m["type"] == "step") <= at
        studio.send(p.encode(p.Resume()))
        studio.until(lambda m: m["type"] == "step" and m["step"] > at)
        studio.send(p.encode(p.Stop()))
        assert studio.until(of("done"))["reason"] == "stopped"
        out = finish(proc, timeout=120)
    finally:
        proc.kill()
        studio.close()
    assert proc.returncode == 0, out


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_nccl_ddp_and_fsdp_train_in_bf16_and_resume_on_one_gpu(two):
    """The GPU path: NCCL, a GPU per LOCAL_RANK, bf16 autocast, FSDP's bf16 mixed precision."""
    cfg, path, _ = two
    gpu = ["--train.device=cuda", "--train.dtype=bfloat16"]
    run_two(path, "--name=nccl-ddp", *gpu)
    run_two(path, "--name=nccl-fsdp", "--train.parallel=fsdp", *gpu)
    ddp, fsdp = losses(cfg, "nccl-ddp"), losses(cfg, "nccl-fsdp")
    assert len(ddp) == len(fsdp) == STEPS
    assert fsdp == pytest.approx(ddp, abs=0.05)  # bf16 weights under FSDP, fp32 under DDP
    single = one_process(cfg, "nccl-resumed")
    single.train.device, single.train.dtype = "cuda", "bfloat16"
    saved = Path(cfg.out_dir) / "nccl-fsdp" / "checkpoints" / f"step_{HALF:08d}.pt"
    assert train(single, resume=str(saved), quiet=True).step == STEPS
