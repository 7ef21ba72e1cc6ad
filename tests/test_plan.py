"""`python -m engine.plan` and the memory arithmetic behind it (engine.config), checked against
what a real model holds on a CPU."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import optim
from engine.contract import config, sizing
from engine.model import GPT

ROOT = Path(__file__).resolve().parent.parent

GPT2_STYLE = config.ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64)
LLAMA_STYLE = dataclasses.replace(
    GPT2_STYLE, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, tie_embeddings=False
)
WIDE_VOCAB = dataclasses.replace(GPT2_STYLE, n_embd=64, n_head=4, vocab_size=512, bias=True)
RECIPE_STYLE = dataclasses.replace(LLAMA_STYLE, qk_norm=True, norm_affine=False, zero_init=True)


def run_config(
    model: config.ModelConfig, batch_size: int = 8, optimizer: str = "adamw"
) -> config.Config:
    cfg = config.Config(model=model)
    cfg.train = config.TrainConfig(
        device="cpu", dtype="float32", batch_size=batch_size, optimizer=optimizer
    )
    return cfg


def measured_activations(model: GPT, batch_size: int) -> int:
    """What one training micro-batch adds to memory at its peak, on this CPU.

    Two parts, measured separately. The tensors autograd saves for backward: every storage
    handed to `saved_tensors_hooks` during the forward, counted once however many views point
    at it, parameters excluded (they are weights, not activations). And the loss's moment in
    backward, when the fp32 log-softmax (already counted as saved) has two gradients of its
    size beside it: the gradient arriving at the logits is one of them, so a hook reads its
    size and the pair counts twice that. engine.config counts the same two things.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    idx = torch.randint(0, model.cfg.vocab_size, (batch_size, model.cfg.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, loss = model(idx, idx)
    grads: list[int] = []
    logits.register_hook(lambda g: grads.append(g.nbytes))
    loss.backward()
    return sum(saved.values()) + 2 * grads[0]


@pytest.mark.parametrize(
    ("model_cfg", "optimizer"),
    [(GPT2_STYLE, "adamw"), (LLAMA_STYLE, "adamw"), (WIDE_VOCAB, "adamw"), (RECIPE_STYLE, "muon")],
    ids=["gpt2", "llama", "wide", "recipe-muon"],
)
def test_memory_estimate_matches_a_real_model_on_cpu(model_cfg, optimizer):
    torch.manual_seed(0)
    model = GPT(model_cfg)
    cfg = run_config(model_cfg, optimizer=optimizer)
    estimate = sizing.memory_estimate(cfg)
    params = list(model.parameters())
    assert estimate["params"] == sum(p.nbytes for p in params)

    optimizer = optim.build(model, cfg.train)
    activations = measured_activations(model, batch_size=8)
    optimizer.step()
    assert estimate["grads"] == sum(p.grad.nbytes for p in params)
    held = sum(v.nbytes for s in optimizer.state.values() for v in s.values())
    assert estimate["optimizer"] == held  # AdamW: two moments and a step count; Muon: one moment
    assert estimate["activations"] == pytest.approx(activations, rel=0.25)


def test_parameter_shapes_are_the_models_own():
    for model_cfg in (GPT2_STYLE, LLAMA_STYLE, WIDE_VOCAB):
        named = {n: tuple(p.shape) for n, p in GPT(model_cfg).named_parameters()}
        assert sizing.param_shapes(model_cfg, model_cfg.vocab_size) == named


def test_fsdp_shards_weights_gradients_and_optimizer_state_but_not_activations():
    cfg = config.load_preset("large")
    single = sizing.memory_estimate(cfg)
    ddp = sizing.memory_estimate(cfg, world_size=8, parallel="ddp")
    fsdp = sizing.memory_estimate(cfg, world_size=8, parallel="fsdp")
    assert ddp == single  # every GPU holds a whole copy
    assert fsdp["activations"] == ddp["activations"]
    assert ddp["optimizer"] / 8 < fsdp["optimizer"] < ddp["optimizer"] / 7.9
    for part in ("params", "grads"):  # a shard, plus what is gathered while a block computes
        assert ddp[part] / 8 < fsdp[part] < ddp[part] / 2
    assert sizing.memory_estimate(cfg, world_size=16, parallel="fsdp")["total"] < fsdp["total"]


def test_largest_micro_batch_is_the_edge_of_fitting():
    cfg = config.load_preset("large")
    gpus, gib = 8, 40.0
    budget = gib * 2**30 * sizing.USABLE_FRACTION
    figures = sizing.plan(cfg, gpus, gib)
    for parallel, figure in figures.items():
        largest = figure["max_batch_size"]
        assert largest > 0

        def total(batch, parallel=parallel):
            trial = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
            return sizing.memory_estimate(trial, world_size=gpus, parallel=parallel)["total"]

        assert total(largest) <= budget < total(largest + 1)
        assert figure["fits"] == (cfg.train.batch_size <= largest)
    assert figures["fsdp"]["max_batch_size"] >= figures["ddp"]["max_batch_size"]


def test_a_model_too_big_for_any_batch_says_none_fits():
    figures = sizing.plan(config.load_preset("large"), gpus=1, gpu_memory_gb=4)
    assert all(f["max_batch_size"] == 0 and not f["fits"] for f in figures.values())


def test_plan_cli_prints_both_strategies_and_rejects_bad_input():
    run = [sys.executable, "-m", "engine.plan", "presets/large.toml"]
    ok = subprocess.run([*run, "--gpus", "16", "--gpu-memory-gb", "16", "--train.batch_size=1"],
                        capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    for text in ("DDP", "FSDP", "parameters", "gradients", "optimizer state", "activations",
                 "largest micro-batch", "on 16 GPUs of 16 GiB", "--train.parallel=fsdp"):  # fmt: skip
        assert text in ok.stdout
    for bad, fault in (
        (["--gpus", "0"], "--gpus 0"),
        (["--gpu-memory-gb", "0"], "--gpu-memory-gb 0"),
    ):
        out = subprocess.run([*run, *bad], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 2
        assert out.stderr.startswith(f"error: {fault}: must be") and out.stderr.count("\n") == 1


def test_plan_never_imports_torch():
    code = "import sys, engine.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
