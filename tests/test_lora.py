"""LoRA: only adapters train and are saved; merged weights compute what the adapters do; a
LoRA run resumes exactly; the adapters load with `peft` onto the exported base model."""

import dataclasses

import pytest
import torch
from test_hf import hf_gpt2, hf_llama  # tiny Hugging Face models, built offline
from test_train import tiny_config

from engine import checkpoint, export, lora
from engine.contract import config
from engine.contract.config import ModelConfig
from engine.model import GPT
from engine.train import train

GPT2_LIKE = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=64, bias=True)
LLAMA_LIKE = dataclasses.replace(
    GPT2_LIKE, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False
)
ALL = list(config.LORA_TARGETS)


def randomised_adapters(model: GPT, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("cfg", [GPT2_LIKE, LLAMA_LIKE], ids=["gpt2", "llama"])
def test_merged_weights_compute_what_the_adapters_compute(cfg):
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    n = lora.apply(model, rank=4, alpha=8.0, dropout=0.0, targets=ALL)
    assert n == cfg.n_layer * (5 if cfg.mlp == "swiglu" else 4)  # fc, or gate and up
    randomised_adapters(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        unmerged = model(ids)[0]
        plain = GPT(cfg).eval()
        adapters = lora.adapter_state(model.state_dict())
        plain.load_state_dict(lora.merge(base, adapters, 8.0 / 4))
        merged = plain(ids)[0]
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_only_adapters_train_and_are_saved(tmp_path):
    base = tiny_config(tmp_path, train__max_steps=5)
    train(base, quiet=True)
    cfg = tiny_config(tmp_path, train__max_steps=6, train__init_from=str(base.run_dir))
    cfg.name = "lora"
    cfg.lora = config.LoraConfig(rank=2, alpha=4.0, targets=["attn.qkv", "mlp.fc"])
    train(cfg, quiet=True)
    saved = checkpoint.load(checkpoint.CheckpointManager(cfg.run_dir).latest())
    assert saved["model"] and all(".lora_" in k for k in saved["model"])
    assert len(saved["model"]) == 2 * 2 * 2  # layers x targets x (A, B)
    n_adapters = len(saved["model"])
    assert (
        len(saved["optimizer"]["adamw"]["state"]) == n_adapters
    )  # no optimizer state for the base
    assert saved["lora"]["base"] == str(checkpoint.resolve(base.run_dir).resolve())
    # the merged model differs from its base exactly where adapters were
    before = checkpoint.load_weights(base.run_dir)["model"]
    after = checkpoint.load_weights(cfg.run_dir)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"blocks.{i}.{t}.weight" for i in range(2) for t in ("attn.qkv", "mlp.fc")}


@pytest.mark.slow
def test_a_lora_run_resumes_exactly(tmp_path):
    base = tiny_config(tmp_path / "base", train__max_steps=5)
    train(base, quiet=True)

    def run(where: str):
        cfg = tiny_config(tmp_path / where, train__max_steps=12, model__dropout=0.1,
                          train__init_from=str(base.run_dir))  # fmt: skip
        cfg.lora = config.LoraConfig(rank=2, dropout=0.1)
        return cfg

    whole = train(run("a"), quiet=True).losses
    half = run("b")
    first = train(half, quiet=True, until=6).losses
    second = train(half, resume="", quiet=True).losses
    assert first + second == pytest.approx(whole, abs=0, rel=0)
    latest = checkpoint.CheckpointManager(run("a").run_dir).latest()
    a = checkpoint.load_weights(latest)["model"]
    b = checkpoint.load_weights(checkpoint.CheckpointManager(half.run_dir).latest())["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_adapters_load_with_peft_onto_the_exported_base(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from engine.tokenizer import BPETokenizer

    text = "The cat sat on the mat. A dog ran in the park.\n" * 40
    tok = BPETokenizer.train([text], 300)
    make = hf_gpt2 if kind == "gpt2" else hf_llama
    make(tmp_path / "hf", tok)
    (tmp_path / "corpus.txt").write_text(text)
    cfg = tiny_config(tmp_path, train__max_steps=4, train__init_from=f"hf:{tmp_path / 'hf'}")
    cfg.tokenizer = config.TokenizerConfig(kind="bpe")
    cfg.data.source = str(tmp_path / "corpus.txt")
    cfg.train.sample_prompts = ["The "]
    cfg.lora = config.LoraConfig(rank=4, alpha=8.0, targets=ALL)
    train(cfg, quiet=True)
    # nudge the trained adapters well away from zero, so a wrong mapping cannot pass
    path = checkpoint.CheckpointManager(cfg.run_dir).latest()
    state = checkpoint.load(path)
    g = torch.Generator().manual_seed(1)
    state["model"] = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in state["model"].items()}
    checkpoint.atomic_save(state, path)

    export.export(f"hf:{tmp_path / 'hf'}", tmp_path / "base")
    export.export(path, tmp_path / "merged")
    export.export_adapter(path, tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    ids = torch.tensor([tok.encode("The dog sat in the park.")])
    with torch.no_grad():
        plain = base(ids).logits  # before peft puts the adapters into it
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ours = checkpoint.build_model(checkpoint.load_weights(path))
    with torch.no_grad():
        expected = ours(ids)[0][..., : tok.vocab_size]
        torch.testing.assert_close(adapted(ids).logits, expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(merged(ids).logits, expected, rtol=0, atol=1e-4)
        assert not torch.allclose(plain, expected, atol=1e-3)


def test_lora_without_a_model_to_adapt_is_refused():
    cfg = config.Config()
    cfg.lora.rank = 4
    with pytest.raises(config.ConfigError, match=r"lora\.rank = 4 needs train\.init_from"):
        config.validate(cfg)
    cfg.train.init_from = "runs/x"
    cfg.lora.targets = ["attn.q"]
    with pytest.raises(config.ConfigError, match=r"lora\.targets"):
        config.validate(cfg)


def test_the_memory_estimate_counts_only_the_adapters_as_trained():
    from engine.contract import sizing

    tuned = config.Config(model=GPT2_LIKE)
    tuned.train.init_from = "runs/base"
    tuned.lora = config.LoraConfig(rank=4, targets=ALL)
    full = sizing.memory_estimate(config.Config(model=GPT2_LIKE))
    est = sizing.memory_estimate(tuned)
    model = GPT(GPT2_LIKE)
    lora.apply(model, rank=4, alpha=8.0, dropout=0.0, targets=ALL)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert est["grads"] == 4 * trainable
    assert est["params"] == full["params"] + 4 * trainable
    assert est["total"] < full["total"]
