import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.contract import config, sizing
from engine.contract.config import Config, ConfigError


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_preset_loads_and_validates():
    assert list(config.presets()) == ["tiny", "mini", "medium", "large", "gpt2"]
    for name in config.presets():
        cfg = config.load_preset(name)
        assert cfg.name == name


@pytest.mark.parametrize(
    ("name", "layers", "heads", "width"),
    [("mini", 12, 12, 768), ("medium", 24, 16, 1024), ("large", 36, 20, 1280)],
)
def test_presets_have_the_promised_shapes(name, layers, heads, width):
    m = config.load_preset(name).model
    assert (m.n_layer, m.n_head, m.n_embd) == (layers, heads, width)


@pytest.mark.parametrize("name", ["tiny", "mini", "medium", "large"])
def test_preset_comment_states_its_parameter_count(name):
    path = config.presets()[name]
    described = config.preset_description(path)
    match = re.search(r"([\d.]+)([KMB]) parameters", described)
    assert match, f"{path.name} must state its parameter count on its first line"
    stated = float(match.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9}[match.group(2)]
    actual = sizing.summary(config.load(path))["params"]
    # tiny's char vocabulary is only a guess until the corpus is read, hence the looser bound
    assert stated == pytest.approx(actual, rel=0.06 if name == "tiny" else 0.01)


def test_large_presets_fit_one_80gb_gpu_in_bf16_and_compile():
    for name in ["mini", "medium", "large"]:
        cfg = config.load_preset(name)
        # auto: bf16 autocast on a GPU, and never the 100x slower bf16 on a CPU by accident
        assert cfg.train.dtype == "auto" and cfg.train.compile
        assert sizing.memory_estimate(cfg)["total"] < 80e9 * 0.9


def test_save_then_load_gives_an_equal_config(tmp_path):
    cfg = config.load_preset("medium", ["--train.sample_prompts=['a', 'b c']", "--name=m2"])
    path = config.save(cfg, tmp_path / "m.toml")
    assert config.load(path) == cfg


def test_save_never_overwrites_unless_asked(tmp_path):
    path = write(tmp_path, "# mine\n")
    with pytest.raises(ConfigError, match="already exists"):
        config.save(Config(), path)
    assert path.read_text() == "# mine\n"
    config.save(Config(), path, overwrite=True)
    assert config.load(path) == Config()


def test_overrides_parse_toml_values_and_bare_strings():
    cfg = config.load_preset(
        "tiny",
        [
            "--model.n_layer=2",
            "--train.lr=3e-4",
            "--model.bias=true",
            "--data.source=builtin:code",
            "--train.sample_prompts=['x', 'y']",
            "--name=123",
            "--train.min_lr=0",
        ],
    )
    assert cfg.model.n_layer == 2
    assert cfg.train.lr == 3e-4
    assert cfg.model.bias is True
    assert cfg.data.source == "builtin:code"
    assert cfg.train.sample_prompts == ["x", "y"]
    assert cfg.name == "123"
    assert isinstance(cfg.train.min_lr, float)


def test_later_overrides_win():
    cfg = config.load_preset("tiny", ["--model.n_layer=2", "--model.n_layer=3"])
    assert cfg.model.n_layer == 3


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[model]\nn_layr = 4\n", r"run\.toml: unknown key 'model\.n_layr'.*did you mean 'model\.n_layer'"),
        ("[modle]\nn_layer = 4\n", r"unknown key 'modle'.*did you mean 'model'"),
        ("[model]\nn_embd = 100\nn_head = 6\n", r"run\.toml: model\.n_embd = 100 must be divisible by model\.n_head = 6 \(e\.g\. 96 or 102\)"),
        ("[train]\nlr = -0.001\n", r"run\.toml: train\.lr = -0\.001 must be greater than 0"),
        ("[train]\nweight_decay = -1.0\n", r"train\.weight_decay = -1\.0 must be 0 or more"),
        ("[model]\ndropout = 1.5\n", r"model\.dropout = 1\.5 must be at least 0 and below 1"),
        ("[model]\nn_layer = 'four'\n", r"model\.n_layer = 'four' must be a whole number"),
        ("[model]\nbias = 1\n", r"model\.bias = 1 must be true or false"),
        ("[model]\nnorm = 'batchnorm'\n", r"model\.norm = 'batchnorm' must be one of layernorm, rmsnorm"),
        ("[model]\nn_head = 8\nn_kv_head = 3\nn_embd = 256\n", r"model\.n_kv_head = 3 must divide model\.n_head = 8"),
        ("[train]\nlr = 1e-4\nmin_lr = 1e-3\n", r"train\.min_lr = 0\.001 must not exceed train\.lr"),
        ("[train]\ndevice = 'tpu'\n", r"train\.device = 'tpu' must be auto, cpu, cuda, cuda:N or mps"),
        ("name = 'a/b'\n", r"name = 'a/b' must be a plain, non-empty folder name"),
        ("model = 3\n", r"\[model\] must be a table"),
        ("[model\n", r"run\.toml: not valid TOML"),
    ],
)  # fmt: skip
def test_bad_config_errors_name_file_key_value_and_what_is_allowed(tmp_path, toml, expected):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError, match=expected):
        config.load(path)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--train.lrr=1", r"override '--train\.lrr=1': unknown key 'train\.lrr'.*did you mean 'train\.lr'"),
        ("--trian.lr=1", r"unknown section \[trian\]; did you mean 'train'"),
        ("--train.lr", r"expected --section\.key=value"),
        ("--model.n_embd=130", r"override '--model\.n_embd=130': model\.n_embd = 130 must be divisible by model\.n_head = 4 \(e\.g\. 128 or 132\)"),
    ],
)  # fmt: skip
def test_bad_overrides_name_the_override(override, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load_preset("tiny", [override])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        config.load(tmp_path / "nope.toml")


def test_check_reports_every_fault_for_the_form():
    cfg = config.from_dict({"model": {"n_embd": 130, "pos": "ropee"}, "train": {"lr": -1}})
    faults = config.check(cfg)
    assert set(faults) == {"model.n_embd", "model.pos", "train.lr"}
    assert config.check(Config()) == {}


def test_param_count_from_config_matches_the_published_gpt2_small_count():
    # GPT-2 small: biases, learned positions, LayerNorm, tied embeddings, 50257-token vocab
    gpt2 = config.ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True)
    assert sizing.param_count(gpt2, 50257)["total"] == 124_439_808


def test_flops_per_token_follows_6n_plus_12ltd():
    m = config.ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32)
    counts = sizing.param_count(m, 128)
    n = counts["total"] - counts["position_embedding"]
    assert sizing.flops_per_token(m, 128) == 6 * n + 12 * 2 * 32 * 64


def test_memory_estimate_grows_with_batch_and_shrinks_with_checkpointing():
    cfg = config.load_preset("mini")
    base = sizing.memory_estimate(cfg)
    cfg.train.batch_size *= 2
    doubled = sizing.memory_estimate(cfg)
    cfg.model.activation_checkpointing = True
    recomputed = sizing.memory_estimate(cfg)
    assert doubled["activations"] > 1.9 * base["activations"]
    assert doubled["params"] == base["params"] == 4 * sizing.summary(cfg)["params"]
    assert recomputed["activations"] < doubled["activations"]


def test_vocab_is_padded_and_known_for_tiktoken():
    cfg = config.load_preset("mini")
    assert sizing.vocab_size(cfg) == 100288  # cl100k's 100277 ids rounded up to 64
    assert sizing.vocab_size(cfg, tokenizer_vocab=65) == 128
    assert sizing.resolve_model(cfg, 65).vocab_size == 128


def test_config_module_never_imports_torch():
    code = "import engine, engine.config, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_import_engine_loads_no_heavy_module():
    code = (
        "import sys, engine, engine.config, engine.tokenizer\n"
        "heavy = {'torch', 'tokenizers', 'pyarrow', 'tiktoken', 'numpy'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_prints_size_and_exits_2_on_a_bad_value(tmp_path):
    run = [sys.executable, "-m", "engine.config"]
    ok = subprocess.run([*run, "presets/mini.toml"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "239M" in ok.stdout and "GiB" in ok.stdout
    bad = subprocess.run([*run, "presets/mini.toml", "--model.n_head=7"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "model.n_embd = 768 must be divisible" in bad.stderr


@settings(max_examples=60, deadline=None)
@given(
    n_layer=st.integers(1, 64),
    lr=st.floats(1e-6, 1.0),
    name=st.text(st.characters(categories=("L", "N")), min_size=1, max_size=12),
    prompts=st.lists(st.text(max_size=20), max_size=3),
)
def test_any_valid_config_survives_a_toml_round_trip(n_layer, lr, name, prompts):
    cfg = Config(name=name)
    cfg.model.n_layer, cfg.train.lr, cfg.train.min_lr = n_layer, lr, 0.0
    cfg.train.sample_prompts = prompts
    config.validate(cfg)
    assert config.loads(config.dumps(cfg)) == cfg


@settings(max_examples=60, deadline=None)
@given(value=st.integers(-(2**40), 2**40))
def test_integer_overrides_are_range_checked_not_crashed(value):
    cfg = config.load_preset("tiny")
    try:
        config.apply_overrides(cfg, [f"--model.n_layer={value}"])
        config.validate(cfg)
    except ConfigError as err:
        assert value <= 0 and "model.n_layer" in str(err)
    else:
        assert value > 0 and cfg.model.n_layer == value


def test_train_parallel_is_ddp_or_fsdp():
    assert config.load_preset("large").train.parallel == "ddp"
    assert config.load_preset("large", ["--train.parallel=fsdp"]).train.parallel == "fsdp"
    with pytest.raises(ConfigError, match=r"train.parallel = 'zero3' must be one of ddp, fsdp"):
        config.load_preset("large", ["--train.parallel=zero3"])


def test_every_setting_has_one_line_of_help_from_its_definition():
    from studio.panes.config import form_fields

    keys = list(form_fields())
    assert len(keys) > 80  # every field of every section, not a sample
    missing = [key for key in keys if not config.help_for(key)]
    assert missing == []
    for key in keys:
        line = config.help_for(key)
        assert "\n" not in line and len(line) <= 96, key  # one line under a field
    assert config.help_for("train.max_steps") == "optimizer steps in the run"
    assert config.help_for("train.no_such_key") == ""


def test_a_warmup_longer_than_the_run_is_cut_to_a_tenth_of_it_with_a_note_not_refused():
    cfg = config.load("tiny", ["--train.max_steps=300", "--train.warmup_steps=700"])
    assert config.warmup_steps(cfg.train) == 30
    [note] = config.adjustments(cfg)
    assert (note.key, note.value, note.used) == ("train.warmup_steps", 700, 30)
    assert "train.max_steps = 300" in note.reason
    from engine.schedule import lr_at

    peak = cfg.train.lr
    assert lr_at(29, cfg.train) == pytest.approx(peak) and lr_at(0, cfg.train) < peak / 10
    fits = config.load("tiny", ["--train.max_steps=300", "--train.warmup_steps=300"])
    assert config.warmup_steps(fits.train) == 300 and config.adjustments(fits) == []


def test_tinys_sample_and_checkpoint_intervals_scale_with_the_run_length():
    for steps, every in [(300, 60), (2500, 500), (7, 2), (1, 1)]:
        cfg = config.load("tiny", [f"--train.max_steps={steps}"])
        assert config.sample_interval(cfg.train) == every
        assert config.checkpoint_interval(cfg) == every
    fixed = config.load("tiny", ["--train.max_steps=300", "--train.sample_interval=100"])
    assert config.sample_interval(fixed.train) == 100  # a number given is used as it is
    with pytest.raises(ConfigError, match=r"checkpoint\.interval = -1 must be 0 or more"):
        config.load("tiny", ["--checkpoint.interval=-1"])
