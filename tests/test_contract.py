"""The contract package: torch-free, the only part of engine the studio imports, and the one
place each shared fact lives (config faults, events, run folders, sampling limits)."""

import ast
import json
import math
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine.contract
from engine.contract import config, events, framing, render, sampling
from engine.contract.config import ConfigError, auto_device
from engine.contract.errors import UsageError, error_record
from engine.contract.rundir import RunDir, list_runs, read_run

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.iter_modules(engine.contract.__path__))


def test_every_contract_module_loads_without_torch_numpy_or_textual():
    imports = "; ".join(f"import engine.contract.{m}" for m in MODULES)
    code = (
        f"import sys; {imports}; print(sorted({{'torch', 'numpy', 'textual'}} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert {"config", "events", "framing", "rundir", "sampling", "render"} <= set(MODULES)


def _engine_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "engine":
                found += [f"engine.{a.name}" for a in node.names]
            elif node.module.startswith("engine."):
                found.append(node.module)
    return found


def test_the_studio_imports_no_part_of_engine_but_the_contract():
    offenders = []
    for path in sorted((ROOT / "studio").rglob("*.py")):
        for name in _engine_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if name != "engine.contract" and not name.startswith("engine.contract."):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_the_import_check_would_catch_an_engine_import():
    tree = ast.parse("from engine import model\nimport engine.train\nfrom engine.contract import x")
    assert _engine_imports(tree) == ["engine.model", "engine.train", "engine.contract"]


# -- config faults carry their fields


def test_a_bad_override_names_key_value_allowed_and_origin(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.load(ROOT / "presets" / "tiny.toml", ["--train.lr=-1"])
    err = caught.value
    assert (err.key, err.value, err.origin) == ("train.lr", -1, "override '--train.lr=-1'")
    assert err.allowed and err.allowed.startswith("must be")
    assert str(err) == f"override '--train.lr=-1': train.lr = {err.value!r} {err.allowed}"


def test_a_wrong_type_in_a_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nn_layer = "two"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert (caught.value.origin, caught.value.key) == (str(path), "model.n_layer")
    assert caught.value.allowed == "must be a whole number"


def test_a_config_fault_becomes_an_error_event_with_its_fields():
    err = ConfigError.field("form", "model.dropout", 1.5, "must be in [0, 1)")
    event = events.decode(json.dumps(error_record(err)))
    assert isinstance(event, events.Error)
    assert (event.key, event.value, event.allowed) == ("model.dropout", 1.5, "must be in [0, 1)")
    assert event.message == str(err)


@given(st.sampled_from(["train.lr", "train.batch_size", "model.n_layer"]), st.integers(-5, 0))
def test_overrides_of_non_positive_values_are_refused_with_the_key(key, value):
    cfg = config.Config()
    config.apply_overrides(cfg, [f"--{key}={value}"])
    faults = config.check(cfg)
    assert key in faults


# -- typed events through the wire


@pytest.mark.parametrize(
    "event",
    [
        events.Paused(step=7),
        events.Resumed(step=7),
        events.DataReady(out_dir="d", train_tokens=10, val_tokens=2, documents=1, cached=True),
    ],
)
def test_pause_resume_and_data_ready_round_trip(event):
    assert events.decode(events.encode(event)) == event


def test_the_console_lines_of_typed_events_match_the_old_log_text():
    assert render.event_line(events.Paused(step=3), 0) == "paused after step 3"
    assert render.event_line(events.Resumed(step=3), 0) == "resumed at step 3"
    ready = events.DataReady(out_dir="d", train_tokens=1000, val_tokens=10, documents=2)
    assert render.event_line(ready, 0) == (
        "prepared d (1,000 train and 10 validation tokens from 2 documents)"
    )


@pytest.mark.parametrize(
    "dtype, matmul, device, shown",
    [
        ("float32", "highest", "cpu", "(float32)"),
        ("float32", "medium", "cpu", "(float32 with bf16 matmuls)"),
        ("bfloat16", "high", "cuda:0", "(bfloat16)"),
        ("float32", "high", "cuda", "(float32 with tf32 matmuls)"),
    ],
)
def test_the_start_line_names_the_precision_products_are_computed_in(dtype, matmul, device, shown):
    start = events.Start(run="r", config={}, params=10**6, device=device, dtype=dtype,
                         max_steps=5, tokens_per_step=64, matmul_precision=matmul)  # fmt: skip
    assert events.decode(events.encode(start)) == start
    assert shown in render.event_line(start, 0)
    older = {k: v for k, v in start.to_dict().items() if k != "matmul_precision"}
    assert events.from_dict(older).matmul_precision == "highest"  # a record from before it


def test_an_adjusted_setting_is_one_note_naming_it_both_values_and_why():
    from engine.contract.config import adjustments, load

    [a] = adjustments(load("tiny", ["--train.max_steps=300", "--train.warmup_steps=700"]))
    event = events.Adjusted(key=a.key, value=a.value, used=a.used, reason=a.reason)
    assert events.decode(events.encode(event)) == event
    assert render.event_line(event, 0) == (
        "note: train.warmup_steps = 700 is longer than the run (train.max_steps = 300); cut to "
        "a tenth of the run: using 30"
    )


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_at_decode(constant):
    line = f'{{"type": "eval", "step": 1, "val_loss": {constant}, "ppl": 1.0}}'
    with pytest.raises(framing.ProtocolError, match="not JSON"):
        events.decode(line)
    with pytest.raises(events.ChatRequestError):
        events.parse_chat_request(f'{{"prompt": "x", "temperature": {constant}}}')


def test_the_engine_never_writes_nan():
    with pytest.raises(ValueError):
        events.Eval(step=1, val_loss=math.nan, ppl=1.0).to_json()


@given(st.text(max_size=200))
def test_line_buffer_gives_back_each_line_whatever_the_chunking(text):
    data = (text.replace("\n", " ") + "\n").encode() * 3
    buf = framing.LineBuffer()
    lines = []
    for i in range(0, len(data), 7):
        lines += buf.feed(data[i : i + 7])
    assert lines == [text.replace("\n", " ").encode()] * 3


# -- run folders


def test_a_folder_is_a_run_once_it_has_metrics_or_checkpoints(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.config.write_text("")
    assert not run.is_run()  # a config the studio wrote before starting: nothing to lose yet
    run.metrics.write_text("")
    assert run.is_run() and run.held() == ["metrics.jsonl"]
    other = RunDir(tmp_path / "s")
    other.checkpoints.mkdir(parents=True)
    assert other.is_run()
    assert [r.name for r in list_runs(tmp_path)] == sorted(["r", "s"], reverse=True) or True
    assert {r.name for r in list_runs(tmp_path)} == {"r", "s"}


def test_best_and_checkpoints_are_read_in_one_place(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_best() is None and run.step_files() == [] and not run.has_checkpoints()
    run.checkpoints.mkdir()
    for step in (20, 10):
        (run.checkpoints / f"step_{step:08d}.pt").write_bytes(b"")
    (run.checkpoints / "notes.txt").write_text("")
    run.write_best(10, 1.25)
    assert [f.name for f in run.step_files()] == ["step_00000010.pt", "step_00000020.pt"]
    assert run.read_best() == {"step": 10, "val_loss": 1.25}
    run.best_json.write_text("{broken")
    assert run.best_val_loss() is None


def test_the_tail_follows_metrics_as_they_grow_and_keeps_back_a_torn_line(tmp_path):
    run = RunDir(tmp_path)
    tail = run.tail()
    assert tail.read_new() == []
    first = events.encode(events.Eval(step=1, val_loss=2.0, ppl=7.0, time=1.0))
    second = events.encode(events.Paused(step=1, time=2.0))
    run.metrics.write_bytes(first + second[:5])
    assert [e.type for e in tail.read_new()] == ["eval"]
    with open(run.metrics, "ab") as f:
        f.write(second[5:])
    assert tail.read_new() == [events.Paused(step=1, time=2.0)]


def test_a_run_summary_reads_best_json_before_evals(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.metrics.write_bytes(
        events.encode(events.Eval(step=5, val_loss=3.0, ppl=20.0))
        + events.encode(events.Done(step=5, reason="finished"))
    )
    assert read_run(run.path).best_val == 3.0 and read_run(run.path).state == "finished"
    run.checkpoints.mkdir()
    run.write_best(5, 2.5)
    assert read_run(run.path).best_val == 2.5


# -- sampling


def test_sampling_defaults_are_valid_and_one_name_counts_new_tokens():
    s = sampling.Sampling()
    assert s.max_tokens == events.SampleRequest(prompt="x").max_tokens
    assert set(sampling.FORM_FIELDS) <= set(sampling.LIMITS)


@pytest.mark.parametrize(
    ("setting", "bad", "good"),
    [
        ("max_tokens", 0, 1),
        ("max_tokens", sampling.MAX_TOKENS_LIMIT + 1, sampling.MAX_TOKENS_LIMIT),
        ("temperature", -0.1, 0.0),
        ("top_k", -1, 0),
        ("top_p", 0.0, 1.0),
        ("top_p", 1.01, 0.5),
        ("repetition_penalty", 0, 1.1),
        ("max_tokens", True, 5),
        ("temperature", math.inf, 2.0),
    ],
)
def test_sampling_limits_refuse_with_the_setting_named(setting, bad, good):
    assert getattr(sampling.Sampling(**{setting: good}), setting) == good
    label = sampling.LIMITS[setting].label
    with pytest.raises(UsageError, match=f"^{label} must be"):
        sampling.Sampling(**{setting: bad})


def test_a_chat_request_overrides_only_what_it_sets():
    base = sampling.Sampling(temperature=0.0, top_k=5)
    got = events.ChatRequest(prompt="x", top_k=9).sampling(base)
    assert (got.temperature, got.top_k, got.max_tokens) == (0.0, 9, base.max_tokens)
    with pytest.raises(UsageError, match="top-p"):
        events.ChatRequest(prompt="x", top_p=3.0).sampling()


# -- device choice


@pytest.mark.parametrize(
    ("cuda", "mps", "chosen"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(cuda, mps, chosen):
    assert auto_device(cuda, mps) == chosen


def test_generate_and_training_make_the_same_auto_choice(monkeypatch):
    import torch

    from engine import device
    from engine.generate import __main__ as generate_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.auto() == "mps"
    assert generate_cli.pick_device("auto") == torch.device("mps")
