"""Weights in from and out to Hugging Face layouts, checked against transformers itself.

Every model here is tiny and random, built and saved by the test: nothing is downloaded.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from engine import checkpoint, export, generate, hf
from engine.contract.config import ModelConfig
from engine.contract.errors import UsageError
from engine.contract.sizing import padded_vocab
from engine.export import __main__ as export_cli
from engine.generate import __main__ as generate_cli
from engine.model import GPT
from engine.tokenizer import BPETokenizer, CharTokenizer, TiktokenTokenizer, Tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "The cat sat on the mat. 猫は日本語で話す 😀🎉 naïve café\n" * 20
SAMPLE = "The mat sat on 日本 😀 café<|endoftext|>naïve  cat\n\n"
ATOL = 1e-4


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT], 300)


def sharpen(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights well away from the initial 0.02 spread, so logits differ by more than ATOL."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def ids_tensor(tokenizer: Tokenizer, text: str = SAMPLE) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text, allow_special=True)])


def ours_logits(source, ids: torch.Tensor) -> torch.Tensor:
    model = checkpoint.build_model(checkpoint.load_weights(source))
    with torch.no_grad():
        return model(ids)[0]


def hf_gpt2(path: Path, tokenizer: BPETokenizer, **overrides):
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        n_positions=32,
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id,
        **overrides,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    sharpen(model)
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    return model


def hf_llama(path: Path, tokenizer: BPETokenizer, **overrides):
    settings = dict(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=16,
        intermediate_size=40,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64,
        rope_theta=500.0,
        bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id,
    )
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings | overrides))
    sharpen(model.eval())
    model.save_pretrained(path)
    tokenizer.save(path / "tokenizer.json")
    return model


def their_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# --- import ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_import_gives_the_logits_of_transformers(tmp_path, bpe, tied):
    model = hf_gpt2(tmp_path, bpe, tie_word_embeddings=tied)
    ids = ids_tensor(bpe)
    torch.testing.assert_close(
        ours_logits(f"hf:{tmp_path}", ids), their_logits(model, ids), rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("files", ["sharded", "pytorch_model.bin", "no_prefix"])
def test_gpt2_weights_load_from_every_usual_file_layout(tmp_path, bpe, files):
    model = hf_gpt2(tmp_path, bpe)
    if files == "sharded":
        (tmp_path / "model.safetensors").unlink()
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        (tmp_path / "model.safetensors").unlink()
        state = model.state_dict()
        if files == "no_prefix":  # how a bare GPT2Model saves, as OpenAI's original upload does
            state = {k.removeprefix("transformer."): v for k, v in state.items()}
        torch.save(state, tmp_path / "pytorch_model.bin")
    ids = ids_tensor(bpe)
    torch.testing.assert_close(
        ours_logits(f"hf:{tmp_path}", ids), their_logits(model, ids), rtol=0, atol=ATOL
    )


def test_gpt2_tokenizer_builds_from_vocab_and_merges(tmp_path, bpe):
    hf_gpt2(tmp_path, bpe)
    from tokenizers import Tokenizer as HFTokenizer

    written = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer.json").unlink()
    written.model.save(str(tmp_path))  # vocab.json and merges.txt, as GPT-2 ships them
    assert {"vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    state = hf.load(tmp_path)
    from engine.tokenizer import from_spec

    tok = from_spec(state["tokenizer"])
    assert tok.encode(SAMPLE, allow_special=True) == bpe.encode(SAMPLE, allow_special=True)
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE


def test_llama_import_gives_the_logits_of_transformers(tmp_path, bpe):
    model = hf_llama(tmp_path, bpe, attention_bias=True, mlp_bias=True)
    ids = ids_tensor(bpe)
    torch.testing.assert_close(
        ours_logits(f"hf:{tmp_path}", ids), their_logits(model, ids), rtol=0, atol=ATOL
    )


def test_an_hf_directory_loads_in_the_shape_of_a_checkpoint(tmp_path, bpe):
    hf_gpt2(tmp_path, bpe)
    state = checkpoint.load_weights(f"hf:{tmp_path}")
    assert state["step"] == 0 and state["source"] == f"hf:{tmp_path}"
    assert state["tokenizer"] == bpe.spec()
    cfg = ModelConfig(**state["config"]["model"])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (2, 16, 32, 300)
    assert GPT(cfg).load_state_dict(state["model"])  # what fine-tuning does with it


def test_generate_cli_samples_from_an_hf_directory(tmp_path, bpe, capsys):
    hf_gpt2(tmp_path, bpe)
    argv = [f"hf:{tmp_path}", "--prompt", "The cat", "--max-tokens", "8", "--temperature", "0"]
    assert generate_cli.main(argv) == 0
    model = checkpoint.build_model(checkpoint.load_weights(f"hf:{tmp_path}"))
    expected = generate.generate(model, bpe, "The cat", 8, temperature=0)
    assert capsys.readouterr().out == f"The cat{expected}\n"


def _break(path: Path, how: str, bpe: BPETokenizer) -> None:
    if how == "no config.json":
        (path / "config.json").unlink()
    elif how == "bert":
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    elif how == "relu":
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    elif how == "no weights":
        (path / "model.safetensors").unlink()
    elif how == "missing weight":
        from safetensors.torch import load_file, save_file

        tensors = load_file(path / "model.safetensors")
        del tensors["transformer.h.1.mlp.c_fc.weight"]
        save_file(tensors, path / "model.safetensors")
    elif how == "no tokenizer":
        (path / "tokenizer.json").unlink()
    elif how == "no end of text":
        from tokenizers import Tokenizer, models

        Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(str(path / "tokenizer.json"))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no config.json", "no config.json"),
        ("bert", "model_type 'bert' in config.json is not supported; gpt-studio imports gpt2"),
        ("relu", "activation_function = 'relu' is not supported"),
        ("no weights", "no weights; expected model.safetensors or pytorch_model.bin"),
        ("missing weight", "weight 'transformer.h.1.mlp.c_fc.weight' is missing"),
        ("no tokenizer", "no tokenizer; expected tokenizer.json, or vocab.json and merges.txt"),
        ("no end of text", "has no '<|endoftext|>' token"),
    ],
)
def test_an_hf_directory_we_cannot_use_gets_one_clear_error(tmp_path, bpe, how, message):
    hf_gpt2(tmp_path, bpe)
    _break(tmp_path, how, bpe)
    with pytest.raises(UsageError, match=message.replace("|", r"\|").replace("(", r"\(")):
        checkpoint.load_weights(f"hf:{tmp_path}")


def test_a_path_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        checkpoint.load_weights(f"hf:{tmp_path / 'nowhere'}")


# --- export ----------------------------------------------------------------------------------

BASE = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=64)
LLAMA = dataclasses.replace(BASE, pos="rope", norm="rmsnorm", mlp="swiglu")
# the recipe's exportable switches: QK-norm, gain-free norms, zero-initialised projections
RECIPE = dataclasses.replace(
    LLAMA, qk_norm=True, norm_affine=False, zero_init=True, tie_embeddings=False
)


def save_ours(path: Path, cfg: ModelConfig, tokenizer: Tokenizer) -> GPT:
    cfg = dataclasses.replace(cfg, vocab_size=padded_vocab(tokenizer.vocab_size))
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    sharpen(model)
    state = {
        "model": model.state_dict(),
        "config": {"model": dataclasses.asdict(cfg)},
        "tokenizer": tokenizer.spec(),
        "step": 9,
    }
    checkpoint.atomic_save(state, path)
    return model


def assert_exports_faithfully(tmp_path: Path, cfg: ModelConfig, tokenizer: Tokenizer, kind: str):
    model = save_ours(tmp_path / "ckpt.pt", cfg, tokenizer)
    out = tmp_path / "hf"
    assert export.export(tmp_path / "ckpt.pt", out) == kind
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    their_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = ids_tensor(tokenizer, SAMPLE)
    assert their_tok(SAMPLE)["input_ids"] == ids[0].tolist()
    assert their_tok.decode(ids[0].tolist()) == SAMPLE
    with torch.no_grad():
        ours = model(ids)[0][..., : tokenizer.vocab_size]
    torch.testing.assert_close(their_logits(theirs, ids), ours, rtol=0, atol=ATOL)
    return out


@pytest.mark.parametrize(
    ("cfg", "kind"),
    [
        (BASE, "gpt2"),
        (dataclasses.replace(BASE, bias=True, tie_embeddings=False, mlp_hidden=48), "gpt2"),
        (dataclasses.replace(BASE, mlp="gelu_exact"), "gpt2"),
        (dataclasses.replace(LLAMA, n_kv_head=2, tie_embeddings=False, rope_theta=777.0), "llama"),
        (dataclasses.replace(LLAMA, bias=True, norm_eps=1e-6), "llama"),
        (dataclasses.replace(BASE, norm_affine=False, bias=True), "gpt2"),
        (dataclasses.replace(LLAMA, norm_affine=False, zero_init=True), "llama"),
        (dataclasses.replace(LLAMA, qk_norm=True, n_kv_head=2), "qwen3"),
        (RECIPE, "qwen3"),
    ],
    ids=[
        "gpt2",
        "gpt2-bias-untied",
        "gpt2-exact-gelu",
        "llama-gqa-untied",
        "llama-bias-tied",
        "gpt2-gain-free-norms",
        "llama-gain-free-zero-init",
        "qwen3-qk-norm-gqa",
        "qwen3-recipe",
    ],
)
def test_export_loads_in_transformers_with_our_logits(tmp_path, bpe, cfg, kind):
    assert_exports_faithfully(tmp_path, cfg, bpe, kind)


def test_a_char_tokenizer_exports_so_autotokenizer_gives_the_same_ids(tmp_path):
    tok = CharTokenizer.train([SAMPLE.replace("<|endoftext|>", "")])
    assert_exports_faithfully(tmp_path, LLAMA, tok, "llama")


def test_a_tiktoken_tokenizer_exports_so_autotokenizer_gives_the_same_ids(tmp_path):
    tok = TiktokenTokenizer("cl100k_base")
    cfg = dataclasses.replace(BASE, n_layer=1, n_head=2, n_embd=8)
    out = assert_exports_faithfully(tmp_path, cfg, tok, "gpt2")
    their_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in [
        "It's 2024: 12345 apples,   spaces\n\n\ttabs and CAPS I'll've",
        "def f(x):\n    return x ** 2  # 日本語 😀\r\n",
        "<|endoftext|><|endofprompt|> trailing spaces   ",
    ]:
        ids = tok.encode(text, allow_special=True)
        assert their_tok(text)["input_ids"] == ids
        assert their_tok.decode(ids) == text


@pytest.mark.parametrize(
    "cfg",
    [dataclasses.replace(LLAMA, n_kv_head=1), RECIPE, dataclasses.replace(BASE, mlp="gelu_exact")],
    ids=["llama", "qwen3", "gpt2-exact-gelu"],
)
def test_exporting_then_importing_gives_back_the_same_model(tmp_path, bpe, cfg):
    model = save_ours(tmp_path / "ckpt.pt", cfg, bpe)
    export.export(tmp_path / "ckpt.pt", tmp_path / "hf")
    ids = ids_tensor(bpe)
    with torch.no_grad():
        expected = model(ids)[0][..., : bpe.vocab_size]
    torch.testing.assert_close(
        ours_logits(f"hf:{tmp_path / 'hf'}", ids), expected, rtol=0, atol=ATOL
    )


RECIPE_SWITCHES = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True}


@pytest.mark.parametrize(
    ("switches", "named"),
    [
        ({"mlp": "swiglu"}, "model.mlp = 'swiglu' needs model.pos = 'rope'"),
        ({"norm": "rmsnorm"}, "model.norm = 'rmsnorm' needs model.pos = 'rope'"),
        ({"pos": "rope", "mlp": "gelu", "norm": "rmsnorm"}, "model.mlp = 'gelu' needs"),
        ({"pos": "rope", "norm": "layernorm"}, "model.norm = 'layernorm' needs"),
        ({"n_kv_head": 2}, "model.n_kv_head = 2 \\(grouped-query attention\\) needs the Llama"),
        ({"qk_norm": True}, "model.qk_norm = true needs the Qwen3 format"),
        ({**RECIPE_SWITCHES, "bias": True}, "model.qk_norm = true with model.bias = true"),
        ({**RECIPE_SWITCHES, "logit_softcap": 15.0}, "model.logit_softcap = 15: no Llama"),
        ({**RECIPE_SWITCHES, "mlp": "relu2"}, "model.mlp = 'relu2': no Llama- or Qwen3-style"),
    ],
)
def test_a_model_that_fits_neither_format_is_refused_naming_the_switch(
    tmp_path, bpe, switches, named
):
    save_ours(tmp_path / "ckpt.pt", dataclasses.replace(BASE, **switches), bpe)
    with pytest.raises(UsageError, match=f"cannot export: {named}"):
        export.export(tmp_path / "ckpt.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # refused before writing anything


def test_export_never_writes_into_a_folder_that_holds_files_unless_forced(tmp_path, bpe, capsys):
    save_ours(tmp_path / "ckpt.pt", BASE, bpe)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export_cli.main([str(tmp_path / "ckpt.pt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert export_cli.main([str(tmp_path / "ckpt.pt"), str(out), "--force"]) == 0
    assert "exported GPT-2 model" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_init_from_hf_fine_tunes_the_imported_weights(tmp_path, bpe):
    from engine.contract import config
    from engine.train import train

    hf_gpt2(tmp_path / "gpt2", bpe)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 5, encoding="utf-8")
    cfg = config.Config(name="tuned", out_dir=str(tmp_path / "runs"))
    cfg.data = config.DataConfig(source=str(corpus), val_fraction=0.2,
                                 cache_dir=str(tmp_path / "cache"))  # fmt: skip
    cfg.train = config.TrainConfig(
        device="cpu", batch_size=4, max_steps=3, warmup_steps=1, eval_interval=3, eval_steps=1,
        sample_interval=3, sample_prompts=["The "], sample_tokens=4, init_from=f"hf:{tmp_path / 'gpt2'}",
    )  # fmt: skip
    cfg.model.block_size = 32
    cfg.log.interval = 1
    state = train(cfg, quiet=True)
    assert state.step == 3
    saved = checkpoint.load_weights(cfg.run_dir)
    assert saved["config"]["model"]["n_layer"] == 2 and saved["config"]["model"]["n_embd"] == 16
    assert saved["tokenizer"] == checkpoint.load_weights(f"hf:{tmp_path / 'gpt2'}")["tokenizer"]
    log = (cfg.run_dir / "metrics.jsonl").read_text()
    assert "model shape from hf:" in log  # the config asked for another shape: said, not silent


def test_every_preset_exports_and_the_recipe_ones_as_qwen3():
    from engine.contract.config import load_preset, presets

    formats = {name: export.layout(load_preset(name).model) for name in presets()}
    assert formats == {
        "tiny": "qwen3", "mini": "qwen3", "medium": "qwen3", "large": "qwen3", "gpt2": "gpt2"
    }  # fmt: skip
