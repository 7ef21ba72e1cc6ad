import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from engine.contract import config, sizing
from engine.contract.config import ModelConfig
from engine.model import GPT

VOCAB = 96

BASE = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=VOCAB)
VARIANTS = {
    "gpt2": BASE,
    "rope": dataclasses.replace(BASE, pos="rope"),
    "rmsnorm": dataclasses.replace(BASE, norm="rmsnorm"),
    "swiglu": dataclasses.replace(BASE, mlp="swiglu"),
    "bias": dataclasses.replace(BASE, bias=True),
    "dropout": dataclasses.replace(BASE, dropout=0.2),
    "gqa": dataclasses.replace(BASE, n_kv_head=2),
    "mqa": dataclasses.replace(BASE, n_kv_head=1),
    "untied": dataclasses.replace(BASE, tie_embeddings=False),
    "checkpointing": dataclasses.replace(BASE, activation_checkpointing=True),
    "llama": dataclasses.replace(
        BASE, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False
    ),
    "qk_norm": dataclasses.replace(BASE, qk_norm=True),
    "relu2": dataclasses.replace(BASE, mlp="relu2"),
    "softcap": dataclasses.replace(BASE, logit_softcap=5.0),
    "gain_free_layernorm": dataclasses.replace(BASE, norm_affine=False, bias=True),
    "gain_free_rmsnorm": dataclasses.replace(BASE, norm="rmsnorm", norm_affine=False),
    "zero_init": dataclasses.replace(BASE, zero_init=True),
    "recipe": dataclasses.replace(
        BASE,
        pos="rope",
        norm="rmsnorm",
        norm_affine=False,
        mlp="swiglu",
        qk_norm=True,
        zero_init=True,
        tie_embeddings=False,
    ),
}


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_changing_a_future_token_leaves_earlier_logits_unchanged(name):
    model = build(VARIANTS[name]).eval()
    x = tokens(2, 16)
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % VOCAB
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_decoding_equals_a_full_forward_pass(name):
    model = build(VARIANTS[name]).eval()
    x = tokens(3, 20)
    with torch.no_grad():
        full, _ = model(x)
        cache = model.make_cache(batch_size=3)
        # a prompt, a second chunk (queries offset from keys), then one token at a time
        pieces = [model(x[:, :7], cache=cache)[0], model(x[:, 7:12], cache=cache)[0]]
        pieces += [model(x[:, t : t + 1], cache=cache)[0] for t in range(12, 20)]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_last_only_returns_the_final_position_logits():
    model = build(BASE).eval()
    x = tokens(2, 10)
    with torch.no_grad():
        full, _ = model(x)
        last, _ = model(x, last_only=True)
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_a_cache_reset_starts_a_new_sequence():
    model = build(VARIANTS["rope"]).eval()
    x = tokens(1, 8)
    with torch.no_grad():
        cache = model.make_cache(batch_size=1)
        first, _ = model(x, cache=cache)
        cache.reset()
        again, _ = model(x, cache=cache)
    torch.testing.assert_close(first, again)


def test_sequences_longer_than_the_context_are_refused():
    model = build(BASE)
    with pytest.raises(ValueError, match="exceeds the context of 24"):
        model(tokens(1, 25))
    cache = model.make_cache(batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        model(tokens(1, 9), cache=cache)


@pytest.mark.parametrize("name", ["gpt2", "gqa", "mqa"])
def test_attention_matches_a_plain_softmax_reference(name):
    cfg = VARIANTS[name]
    attn = build(cfg).blocks[0].attn.eval()
    x = torch.randn(2, 10, cfg.n_embd, generator=torch.Generator().manual_seed(3))
    B, T, hs = 2, 10, cfg.head_dim
    q, k, v = attn.qkv(x).split(attn.split, dim=-1)
    q = q.view(B, T, cfg.n_head, hs).transpose(1, 2)
    k = k.view(B, T, cfg.kv_heads, hs).transpose(1, 2)
    v = v.view(B, T, cfg.kv_heads, hs).transpose(1, 2)
    group = cfg.n_head // cfg.kv_heads  # each key/value head serves this many query heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, None, None, 0), attn.proj(y))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_switch_builds_and_trains_a_step(name):
    cfg = VARIANTS[name]
    model = build(cfg).train()
    opt = model.optimizer(lr=1e-2, weight_decay=0.1)
    x, y = tokens(4, 16), tokens(4, 16, seed=2)
    _, loss = model(x, y)
    assert math.isfinite(loss.item())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        _, after = model(x, y)
    assert after.item() < loss.item()


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_from_config_equals_the_model(name):
    cfg = VARIANTS[name]
    model = build(cfg)
    counts = sizing.param_count(cfg, VOCAB)
    assert model.num_params() == counts["total"]
    no_emb = counts["total"] - counts["token_embedding"] - counts["position_embedding"]
    assert model.num_params(embeddings=False) == no_emb


def test_preset_shapes_count_the_same_in_config_and_model():
    # mini at full width but 1 layer keeps the test fast while covering the real dimensions
    for name in ["mini", "large"]:
        cfg = config.load_preset(name, ["--model.n_layer=1", "--model.vocab_size=512"])
        with torch.device("meta"):
            model = GPT(cfg.model)
        assert model.num_params() == sizing.summary(cfg)["params"]


def test_flops_per_token_counts_matmul_weights_and_attention():
    attention = 12 * BASE.n_layer * BASE.block_size * BASE.n_embd
    untied = build(VARIANTS["untied"])  # its output matrix is outside the embeddings
    assert untied.flops_per_token() == 6 * untied.num_params(embeddings=False) + attention
    tied = build(BASE)  # the token table doubles as the output projection: a real matmul
    matmul_weights = tied.num_params(embeddings=False) + tied.wte.weight.numel()
    assert tied.flops_per_token() == 6 * matmul_weights + attention


def test_residual_projections_get_the_scaled_gpt2_init():
    cfg = dataclasses.replace(BASE, n_layer=8, n_embd=256, n_head=8)
    model = build(cfg)
    expected = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert block.mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_zero_init_blocks_start_as_the_identity():
    model = build(VARIANTS["zero_init"]).eval()
    x = tokens(2, 16)
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()
    with torch.no_grad():
        stream = model.wte(x) + model.wpe(torch.arange(16))
        skipped = model.lm_head(model.norm_f(stream))
        torch.testing.assert_close(model(x)[0], skipped)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    model = build(VARIANTS["qk_norm"]).eval()
    x = tokens(2, 16)
    with torch.no_grad():
        before = model(x)[0]
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * BASE.n_embd] *= 7.0  # the query and key rows
        torch.testing.assert_close(model(x)[0], before, rtol=0, atol=1e-3)  # eps aside
    plain = build(BASE).eval()
    with torch.no_grad():
        before = plain(x)[0]
        for block in plain.blocks:
            block.attn.qkv.weight[: 2 * BASE.n_embd] *= 7.0
        assert not torch.allclose(plain(x)[0], before, atol=1e-2)


def test_relu2_mlp_is_the_square_of_relu():
    mlp = build(VARIANTS["relu2"]).blocks[0].mlp
    h = torch.randn(3, BASE.n_embd)
    expected = mlp.proj(torch.relu(mlp.fc(h)) ** 2)
    torch.testing.assert_close(mlp(h), expected)


def test_logit_softcap_bounds_every_logit_and_keeps_small_ones():
    capped, plain = build(VARIANTS["softcap"]).eval(), build(BASE).eval()
    x = tokens(2, 16)
    with torch.no_grad():
        for model in (capped, plain):
            model.lm_head.weight.mul_(50.0)  # logits beyond the cap
        assert capped(x)[0].abs().max() <= 5.0 < plain(x)[0].abs().max()
    small = build(VARIANTS["softcap"]).eval()
    with torch.no_grad():  # logits below 1 pass nearly unchanged: 5·tanh(z/5) = z - z³/75 + ...
        torch.testing.assert_close(small(x)[0], build(BASE).eval()(x)[0], rtol=0, atol=1e-2)


def test_gain_free_norms_have_no_parameters():
    for name in ("gain_free_layernorm", "gain_free_rmsnorm", "recipe"):
        model = build(VARIANTS[name])
        assert not any("norm" in n for n, _ in model.named_parameters()), name


def test_tied_embeddings_share_one_matrix_and_untied_do_not():
    tied, untied = build(BASE), build(VARIANTS["untied"])
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight


def test_weight_decay_applies_to_matrices_only():
    model = build(VARIANTS["bias"])
    decay, no_decay = model.optimizer(lr=1e-3, weight_decay=0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_activation_checkpointing_gives_the_same_gradients():
    x, y = tokens(2, 16), tokens(2, 16, seed=2)
    grads = []
    for cfg in (BASE, VARIANTS["checkpointing"]):
        model = build(cfg)
        model(x, y)[1].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_outputs_survive_save_and_load(tmp_path):
    cfg = VARIANTS["llama"]
    model = build(cfg, seed=5).eval()
    x = tokens(2, 12)
    with torch.no_grad():
        before, _ = model(x)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    fresh = build(cfg, seed=99).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with torch.no_grad():
        after, _ = fresh(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_rope_tables_are_not_saved_in_the_state_dict():
    assert not any("rope" in key for key in build(VARIANTS["rope"]).state_dict())


def test_a_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(BASE, n_embd=64)).train()
    opt = model.optimizer(lr=3e-3, weight_decay=0.0)
    x, y = tokens(4, 24), tokens(4, 24, seed=2)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.1


def test_targets_of_minus_one_are_ignored_by_the_loss():
    model = build(BASE).eval()
    x, y = tokens(1, 10), tokens(1, 10, seed=2)
    masked = y.clone()
    masked[:, :5] = -1
    with torch.no_grad():
        logits, loss = model(x, masked)
    expected = F.cross_entropy(logits[0, 5:], y[0, 5:])
    torch.testing.assert_close(loss, expected)


def test_bf16_autocast_forward_and_backward_run_on_cpu():
    # the CUDA path trains under bf16 autocast; the same code must hold on CPU
    model = build(VARIANTS["llama"])
    x, y = tokens(2, 8), tokens(2, 8, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_attention_serves_training_under_bf16_on_cuda():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = dataclasses.replace(VARIANTS["llama"], n_embd=128, block_size=64)
    model = build(cfg).cuda()
    x, y = tokens(2, 64).cuda(), tokens(2, 64, seed=2).cuda()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(x, y)  # raises if flash attention cannot take these inputs
    loss.backward()
    assert math.isfinite(loss.item())
    assert isinstance(model.optimizer(1e-3, 0.1), torch.optim.AdamW)
    assert model.optimizer(1e-3, 0.1).defaults["fused"] is True


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_model_matches_eager_on_cuda():
    model = build(VARIANTS["llama"]).cuda().eval()
    x = tokens(2, 16).cuda()
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], model(x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "rope", "llama"])
def test_left_padded_rows_get_the_logits_each_row_gets_alone(name):
    model = build(VARIANTS[name]).eval()
    short, long = tokens(1, 5, seed=4), tokens(1, 9, seed=5)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    pad = torch.tensor([4, 0])
    with torch.no_grad():
        alone_short, _ = model(short)
        alone_long, _ = model(long)
        cache = model.make_cache(batch_size=2)
        both, _ = model(batch, cache=cache, pad=pad)
        step = torch.tensor([[7], [8]])
        next_both, _ = model(step, cache=cache, pad=pad)
        next_short, _ = model(torch.cat([short, step[:1]], 1))
    torch.testing.assert_close(both[0, 4:], alone_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], alone_long[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(next_both[0, 0], next_short[0, -1], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(both).all()  # padding queries must not produce NaN


def test_adamw_is_fused_for_plain_cpu_weights():
    # one kernel over all tensors: on a small model the per-tensor loop is a tenth of a step
    assert build(BASE).optimizer(1e-3, 0.1).defaults["fused"] is True
