"""The chunked output layer gives the loss and gradients of the plain one, without its logits."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from engine.contract import config, sizing
from engine.contract.config import ModelConfig
from engine.loss import linear_cross_entropy
from engine.model import GPT


def plain(h, w, t, softcap=None):
    z = (h @ w.t()).float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, t, ignore_index=-1)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunks_give_the_loss_and_gradients_of_the_whole(chunk, softcap):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (40,), generator=g)
    t[::5] = -1  # ignored rows count neither in the sum nor in the mean
    want = plain(h, w, t, softcap)
    want_h, want_w = torch.autograd.grad(want * 3, (h, w))
    got = linear_cross_entropy(h, w, t, chunk, softcap)
    got_h, got_w = torch.autograd.grad(got * 3, (h, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_h, want_h)
    torch.testing.assert_close(got_w, want_w)


def test_without_gradients_only_the_loss_is_computed():
    h, w = torch.randn(10, 8), torch.randn(20, 8)
    t = torch.randint(0, 20, (10,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, 3), plain(h, w, t))


def test_under_bf16_autocast_gradients_keep_the_weights_dtype():
    h = torch.randn(12, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    t = torch.randint(0, 30, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, t, 5)
        want = F.cross_entropy((h @ w.t()).float(), t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, atol=2e-2, rtol=2e-2)
    loss.backward()
    assert h.grad.dtype == w.grad.dtype == torch.float32


def test_a_model_with_logits_too_large_for_one_chunk_trains_as_the_plain_one(monkeypatch):
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    torch.manual_seed(0)
    chunked, whole = GPT(cfg), GPT(cfg)
    whole.load_state_dict(chunked.state_dict())
    x = torch.randint(0, 64, (3, 8))
    y = torch.randint(0, 64, (3, 8))
    _, want = whole(x, y)
    want.backward()
    monkeypatch.setattr(sizing, "LOSS_CHUNK_ELEMENTS", 64 * 5)  # five rows a chunk
    logits, got = chunked(x, y)
    assert logits is None
    got.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(chunked.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_memory_estimate_counts_one_chunk_of_a_wide_vocabulary():
    """Two layers, so the output layer is most of the activations whatever the preset width."""
    mini = config.load("presets/mini.toml", ["--tokenizer.kind=tiktoken"])
    mini = dataclasses.replace(
        mini, model=dataclasses.replace(mini.model, vocab_size=100352, n_layer=2)
    )
    tokens = mini.train.batch_size * mini.model.block_size
    whole_logits = tokens * 100352 * 4
    estimate = sizing.memory_estimate(mini)["activations"]
    assert estimate < whole_logits  # the full logits are never held
    rows = sizing.loss_chunk_rows(tokens, 100352)
    assert estimate > rows * 100352 * 12  # but one chunk's are
