"""Optimizer groups and how the schedule moves them (engine.optim)."""

import copy
import dataclasses

import pytest
import torch

from engine import optim
from engine.contract.config import ModelConfig, TrainConfig
from engine.model import GPT

BASE = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
MUON = TrainConfig(
    optimizer="muon", lr=1e-3, matrix_lr=0.02, embedding_lr=0.2, head_lr=0.004,
    matrix_weight_decay=0.01, embedding_weight_decay=0.002, head_weight_decay=0.003,
    max_steps=100, warmup_steps=10, lr_schedule="wsd", decay_fraction=0.5, min_lr=0.0,
    muon_momentum=0.95, muon_momentum_warmup=20,
)  # fmt: skip


def groups(model: GPT, t: TrainConfig) -> dict[str, dict]:
    return {g["name"]: g for g in optim.build(model, t).param_groups}


def test_muon_takes_the_block_matrices_and_adamw_the_rest_each_at_its_own_rate():
    model = GPT(dataclasses.replace(BASE, tie_embeddings=False, bias=True))
    by_name = groups(model, MUON)
    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    named = dict(model.named_parameters())
    assert ids["matrix"] == {
        id(p) for n, p in named.items() if n.startswith("blocks.") and p.dim() == 2
    }
    assert ids["embedding"] == {id(named["wte.weight"]), id(named["wpe.weight"])}
    assert ids["head"] == {id(named["lm_head.weight"])}
    assert ids["gain"] == {id(p) for p in named.values() if p.dim() == 1}
    assert sum(map(len, ids.values())) == len(named)  # each parameter in exactly one group
    assert [(by_name[k]["lr"], by_name[k]["weight_decay"]) for k in ids] == [
        (0.02, 0.01), (0.2, 0.002), (0.004, 0.003), (1e-3, 0.0)
    ]  # fmt: skip


def test_a_tied_table_learns_at_the_heads_rate():
    by_name = groups(GPT(BASE), MUON)
    assert "embedding" not in by_name or all(p.dim() == 2 for p in by_name["embedding"]["params"])
    model = GPT(BASE)
    assert groups(model, MUON)["head"]["params"][0] is model.wte.weight


def test_the_schedule_scales_every_group_alike_and_warms_muon_momentum_up():
    opt = optim.build(GPT(dataclasses.replace(BASE, tie_embeddings=False)), MUON)
    for step, factor in ((0, 0.1), (9, 1.0), (50, 1.0), (75, 0.5)):
        lr = optim.set_step(opt, step, MUON)
        assert lr == pytest.approx(1e-3 * factor)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["base_lr"] * factor)
    momentum = [optim.muon_momentum_at(s, MUON) for s in (0, 10, 20, 90)]
    assert momentum == pytest.approx([0.85, 0.90, 0.95, 0.95])


def test_muon_state_survives_a_state_dict_round_trip_exactly():
    torch.manual_seed(0)
    cfg = dataclasses.replace(BASE, tie_embeddings=False)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 64, (4, 16))
    opt_a = optim.build(a, MUON)
    for step in range(3):
        optim.set_step(opt_a, step, MUON)
        a(x, x)[1].backward()
        opt_a.step()
        opt_a.zero_grad()
    b.load_state_dict(a.state_dict())
    opt_b = optim.build(b, MUON)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as a checkpoint holds it
    for model, opt in ((a, opt_a), (b, opt_b)):
        optim.set_step(opt, 3, MUON)
        model(x, x)[1].backward()
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_muon_step_is_torchs_muon_with_newton_schulz_in_fp32():
    torch.manual_seed(0)
    weight, grads = torch.randn(12, 5), [torch.randn(12, 5) for _ in range(3)]
    theirs = torch.nn.Parameter(weight.clone())
    reference = torch.optim.Muon([theirs], lr=0.1, weight_decay=0.01, adjust_lr_fn="original")
    mine, buf = weight.clone(), torch.zeros_like(weight)
    for grad in grads:
        theirs.grad = grad
        reference.step()
        optim.muon_step(mine, grad, buf, lr=0.1, weight_decay=0.01, momentum=0.95)
    moved = (theirs.detach() - weight).abs().max()
    # torch orthogonalises in bf16: the steps agree to its precision, a few % of the move
    assert (theirs.detach() - mine).abs().max() < 0.05 * moved
    torch.testing.assert_close(buf, reference.state[theirs]["momentum_buffer"])
