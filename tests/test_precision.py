"""dtype = "auto" on a CPU: the choice follows the matrix units and the calibration's timings,
tested here with both faked so every kind of machine is covered on any machine."""

import pytest
import torch

from engine import device, precision
from engine.contract.config import ModelConfig

AMX_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX512_BF16_CPUINFO = """model name\t: AMD EPYC 9654
flags\t\t: fpu sse avx2 avx512f avx512_bf16
"""
AVX2_CPUINFO = """model name\t: AMD EPYC 7763
flags\t\t: fpu sse avx2 fma
"""


def timings(fp32: float, bf16: float):
    return lambda: {"float32": fp32, "bfloat16": bf16}


def test_cpuinfo_flags_name_the_matrix_units(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.cpu_features(AMX_CPUINFO).units == "amx"
    assert precision.cpu_features(AVX512_BF16_CPUINFO).units == "avx512_bf16"
    plain = precision.cpu_features(AVX2_CPUINFO)
    assert plain.units == "none"
    assert plain.name == "AMD EPYC 7763"
    assert "no bf16 units" in plain.describe()


def test_torch_reporting_amx_counts_as_amx_even_without_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AMX")
    assert precision.cpu_features("").units == "amx"


def test_training_without_bf16_units_is_fp32_without_timing_anything():
    def never():
        raise AssertionError("no calibration is needed without bf16 units")

    choice = precision.for_training(precision.CpuFeatures(capability="AVX2"), never)
    assert choice.dtype == "float32"
    assert "no bf16 matrix units" in choice.reason


@pytest.mark.parametrize("cpuinfo", [AMX_CPUINFO, AVX512_BF16_CPUINFO])
def test_training_with_units_follows_the_calibration(cpuinfo):
    features = precision.cpu_features(cpuinfo)
    # a wide model: bf16 matmuls win by far
    wide = precision.for_training(features, timings(fp32=1.0, bf16=0.2))
    assert wide.dtype == "bfloat16"
    assert "5.00x" in wide.reason
    # a small model: the casts cost more than the units save (the Shakespeare-char case)
    small = precision.for_training(features, timings(fp32=0.09, bf16=0.68))
    assert small.dtype == "float32"
    # a win inside the noise margin is not worth bf16's rounding
    close = precision.for_training(features, timings(fp32=1.0, bf16=0.95))
    assert close.dtype == "float32"


def test_training_with_units_but_no_calibration_stays_fp32():
    features = precision.CpuFeatures(amx_bf16=True)
    assert precision.for_training(features).dtype == "float32"


def test_generation_takes_bf16_outright_with_units_and_measures_without():
    assert precision.for_generation(precision.CpuFeatures(avx512_bf16=True)).dtype == "bfloat16"
    plain = precision.CpuFeatures(capability="AVX2")
    assert precision.for_generation(plain).dtype == "float32"
    # AVX2 streams bf16 weights faster when the step is bound by memory: measured, then taken
    faster = precision.for_generation(plain, timings(fp32=0.76, bf16=0.60))
    assert faster.dtype == "bfloat16"
    slower = precision.for_generation(plain, timings(fp32=0.10, bf16=1.0))
    assert slower.dtype == "float32"
    assert "0.10x" in slower.reason


def test_generation_with_weights_that_fit_in_cache_is_fp32_without_timing():
    def never():
        raise AssertionError("small weights need no calibration")

    for features in (precision.CpuFeatures(amx_bf16=True), precision.CpuFeatures()):
        choice = precision.for_generation(features, never, weight_bytes=4 * 2**20)
        assert choice.dtype == "float32"
        assert "stay in cache" in choice.reason
    big = precision.for_generation(precision.CpuFeatures(), timings(1.0, 0.5), 500 * 2**20)
    assert big.dtype == "bfloat16"


def test_calibrations_time_both_precisions_at_the_models_shapes():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    measured = precision.training_calibration(cfg, batch_size=2)()
    assert set(measured) == {"float32", "bfloat16"}
    assert all(seconds > 0 for seconds in measured.values())
    from engine.model import GPT

    torch.manual_seed(0)
    measured = precision.generation_calibration(GPT(cfg))()
    assert set(measured) == {"float32", "bfloat16"}


def test_training_auto_on_a_cpu_uses_the_choice_and_says_why(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures(amx_bf16=True))
    runtime = device.pick("cpu", "auto", timings(fp32=1.0, bf16=0.25))
    assert runtime.dtype == torch.bfloat16
    assert runtime.why.startswith("precision for training: bfloat16 (amx")
    runtime = device.pick("cpu", "auto", timings(fp32=0.1, bf16=0.7))
    assert runtime.dtype == torch.float32
    # an explicit dtype is obeyed without asking
    assert device.pick("cpu", "bfloat16").why == ""


def test_every_rank_trains_in_the_precision_rank_0_chose():
    """Each rank may calibrate alone and time it differently; rank 0's choice is the one kept."""
    from engine import distributed
    from engine.device import Runtime

    mine = Runtime(torch.device("cpu"), torch.float32, "this rank's own timing")
    group = distributed.Group(mine, rank=1, world_size=2)
    group.broadcast = lambda value: ("bfloat16", "rank 0's timing")  # what rank 0 sent
    agreed = distributed.agreed_precision(group)
    assert (agreed.dtype, agreed.why) == (torch.bfloat16, "rank 0's timing")
    assert agreed.device == mine.device
