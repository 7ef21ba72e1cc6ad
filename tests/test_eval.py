import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import checkpoint, data, eval
from engine.contract import config, sizing
from engine.contract.errors import UsageError
from engine.model import GPT

ROOT = Path(__file__).resolve().parent.parent


def saved_model(tmp_path: Path, text: str, kind: str = "char") -> tuple[Path, config.Config]:
    corpus = tmp_path / "corpus.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus.write_text(text, encoding="utf-8")
    cfg = config.Config(name="e", out_dir=str(tmp_path / "runs"))
    cfg.model = config.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)
    cfg.tokenizer = config.TokenizerConfig(kind=kind, vocab_size=300)
    cfg.data = config.DataConfig(source=str(corpus), val_fraction=0.2,
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip
    tok = data.prepare(cfg).tokenizer
    cfg.model = sizing.resolve_model(cfg, tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    path = tmp_path / "model.pt"
    checkpoint.atomic_save(
        {"model": model.state_dict(), "config": config.to_dict(cfg), "tokenizer": tok.spec(),
         "step": 0},
        path,
    )  # fmt: skip
    return path, cfg


TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400))


def test_bits_per_byte_is_the_loss_in_bits_over_the_bytes_predicted(tmp_path):
    path, _ = saved_model(tmp_path, TEXT)
    report = eval.run(str(path), split="all", batch_size=4)
    # every character and the end-of-text, but the first token of each split (its context)
    assert report.tokens == len(TEXT) + 1 - 2
    assert report.bytes == report.tokens - 1  # ASCII: a byte a character; end-of-text spells none
    assert report.ppl == pytest.approx(math.exp(report.loss))
    # an untrained model is near uniform over its padded vocabulary
    assert report.loss == pytest.approx(math.log(64), rel=0.1)
    assert report.bits_per_byte == pytest.approx(report.loss / math.log(2), rel=0.05)
    again = eval.run(str(path), split="all", batch_size=3)  # other batches, the same windows
    assert (again.tokens, again.bytes) == (report.tokens, report.bytes)
    assert again.loss == pytest.approx(report.loss, rel=1e-6)


def test_bits_per_byte_compares_models_with_different_tokenizers(tmp_path):
    char, _ = saved_model(tmp_path / "c", TEXT)
    bpe, _ = saved_model(tmp_path / "b", TEXT, kind="bpe")
    a = eval.run(str(char), split="all")
    b = eval.run(str(bpe), split="all")
    # the same text, so the same bytes however it was cut (less each split's first token)
    assert abs(a.bytes - b.bytes) <= 16
    assert b.tokens < a.tokens


def test_evaluating_on_another_source_and_bad_arguments(tmp_path):
    path, _ = saved_model(tmp_path, TEXT)
    other = tmp_path / "other.txt"
    other.write_text("the lazy dog. " * 500)
    assert eval.run(str(path), str(other), split="all").tokens == 500 * 14  # + EOT - 1st
    emoji = tmp_path / "emoji.txt"
    emoji.write_text("🙂" * 100)
    with pytest.raises(UsageError, match="char tokenizer cannot encode"):
        eval.run(str(path), str(emoji))
    out = subprocess.run(
        [sys.executable, "-m", "engine.eval", str(path), "--split", "test"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr == (
        "error: --split must be one of val, train, all, got 'test'\n"
    )
