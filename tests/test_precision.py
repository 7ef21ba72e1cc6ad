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
    """A generation calibration's answer."""
    return lambda: {"float32": fp32, "bfloat16": bf16}


def training_timings(fp32: float, bf16: float, bf16_matmuls: float = float("inf"), asked=None):
    """A training calibration's answer; `asked` collects the precisions it was asked to time."""
    seconds = {
        precision.FP32: fp32, precision.BF16: bf16, precision.BF16_MATMULS: bf16_matmuls
    }  # fmt: skip

    def calibrate(modes):
        if asked is not None:
            asked.extend(modes)
        return {m: seconds[m] for m in modes}

    return calibrate


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
    wide = precision.for_training(features, training_timings(fp32=1.0, bf16=0.2, bf16_matmuls=0.4))
    assert (wide.dtype, wide.matmul) == ("bfloat16", "highest")
    assert "bfloat16 5.00x" in wide.reason and "float32 with bf16 matmuls 2.50x" in wide.reason
    # a small model: autocast's casts cost more than the units save, while bf16 products inside
    # fp32 tensors add no cast (the Shakespeare-char case on a Xeon with AMX)
    small = precision.for_training(
        features, training_timings(fp32=0.09, bf16=0.68, bf16_matmuls=0.06)
    )
    assert (small.dtype, small.matmul) == ("float32", "medium")
    assert small.line("training").startswith("precision for training: float32 with bf16 matmuls")
    # a win inside the noise margin is not worth bf16's rounding
    close = precision.for_training(
        features, training_timings(fp32=1.0, bf16=0.95, bf16_matmuls=0.92)
    )
    assert (close.dtype, close.matmul) == ("float32", "highest")
    assert "under the 1.15x" in close.reason


def test_an_explicit_half_is_kept_and_only_the_other_is_chosen():
    features = precision.CpuFeatures(amx_bf16=True)
    asked = []
    fp32 = precision.for_training(features, training_timings(1.0, 0.2, 0.5, asked), dtype="float32")
    assert (fp32.dtype, fp32.matmul) == ("float32", "medium")  # bf16 autocast was not asked
    assert set(asked) == {precision.FP32, precision.BF16_MATMULS}

    def never(modes):
        raise AssertionError("both given: nothing to time")

    exact = precision.for_training(features, never, dtype="float32", matmul="highest")
    assert (exact.dtype, exact.matmul, exact.reason) == ("float32", "highest", "")
    bf16 = precision.for_training(features, never, dtype="bfloat16")
    assert (bf16.dtype, bf16.matmul, bf16.reason) == ("bfloat16", "highest", "")


def test_training_with_units_but_no_calibration_stays_fp32():
    choice = precision.for_training(precision.CpuFeatures(amx_bf16=True))
    assert (choice.dtype, choice.matmul) == ("float32", "highest")


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


def test_calibrations_time_each_precision_at_the_models_shapes_and_put_the_setting_back():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    modes = [precision.FP32, precision.BF16_MATMULS, precision.BF16]
    with precision.matmul_precision("high"):  # none of the modes' own: a restore shows
        measured = precision.training_calibration(cfg, batch_size=2)(modes)
        assert torch.get_float32_matmul_precision() == "high"  # the process's setting put back
    assert set(measured) == set(modes)
    assert all(seconds > 0 for seconds in measured.values())
    from engine.model import GPT

    torch.manual_seed(0)
    measured = precision.generation_calibration(GPT(cfg))()
    assert set(measured) == {"float32", "bfloat16"}


def test_training_auto_on_a_cpu_uses_the_choice_and_says_why(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures(amx_bf16=True))
    runtime = device.pick("cpu", "auto", training_timings(fp32=1.0, bf16=0.25))
    assert runtime.dtype == torch.bfloat16
    assert runtime.why.startswith("precision for training: bfloat16 (amx")
    runtime = device.pick("cpu", "auto", training_timings(fp32=0.1, bf16=0.7, bf16_matmuls=0.06))
    assert (runtime.dtype, runtime.matmul) == (torch.float32, "medium")
    assert runtime.precision == "float32 with bf16 matmuls"
    # explicit settings are obeyed without asking
    assert device.pick("cpu", "bfloat16").why == ""
    exact = device.pick("cpu", "float32", matmul="highest")
    assert (exact.dtype, exact.matmul, exact.why) == (torch.float32, "highest", "")


def test_a_cpu_without_units_trains_in_full_fp32_and_a_gpu_takes_tf32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: precision.CpuFeatures())
    plain = device.pick("cpu", "auto", training_timings(1.0, 0.1, 0.1))
    assert (plain.dtype, plain.matmul) == (torch.float32, "highest")
    assert "no bf16 matrix units" in plain.why
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    gpu = device.pick("cuda", "auto")
    assert (gpu.dtype, gpu.matmul) == (torch.bfloat16, "high")


def kernels(fn) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_bf16_matmuls_keep_fp32_tensors_close_to_exact_and_attention_in_plain_products():
    """The precision the trainer may pick: every tensor stays fp32, the products round their
    inputs to bf16 (an error near bf16's 2^-8), and attention runs as plain products, which the
    CPU's flash kernel would otherwise slice into many small blocks converted one by one."""
    from engine.model import GPT

    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, 64, (2, 16))
    with precision.matmul_precision("highest"):
        exact = model(x, x)[1]
    fast = {}

    def forward(matmul: str):
        runtime = device.Runtime(torch.device("cpu"), torch.float32, matmul=matmul)
        with precision.matmul_precision(matmul), runtime.compute:
            fast[matmul] = model(x, x)[1]

    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash in kernels(lambda: forward("highest"))
    assert flash not in kernels(lambda: forward("medium"))
    assert fast["medium"].dtype == torch.float32
    assert abs(fast["medium"].item() - exact.item()) / exact.item() < 0.02
    assert fast["highest"].item() == exact.item()


def test_every_rank_trains_in_the_precision_rank_0_chose():
    """Each rank may calibrate alone and time it differently; rank 0's choice is the one kept."""
    from engine import distributed
    from engine.device import Runtime

    mine = Runtime(torch.device("cpu"), torch.float32, "this rank's own timing")
    group = distributed.Group(mine, rank=1, world_size=2)
    group.broadcast = lambda value: ("float32", "medium", "rank 0's timing")  # what rank 0 sent
    agreed = distributed.agreed_precision(group)
    assert (agreed.dtype, agreed.matmul, agreed.why) == (torch.float32, "medium", "rank 0's timing")
    assert agreed.device == mine.device


def test_a_run_computes_in_its_matmul_precision_and_puts_the_callers_back(tmp_path):
    from test_train import tiny_config

    from engine.trainer import train

    seen = []

    class Watch:
        def write(self, event) -> None:
            if type(event).__name__ == "Step":
                seen.append(torch.get_float32_matmul_precision())

        def close(self) -> None:
            pass

    cfg = tiny_config(tmp_path, train__max_steps=3, train__dtype="float32",
                      train__matmul_precision="medium", log__interval=1)  # fmt: skip
    with precision.matmul_precision("highest"):
        train(cfg, console=Watch())
        assert torch.get_float32_matmul_precision() == "highest"
    assert seen == ["medium"] * 3


def test_the_memory_check_counts_the_scores_attention_by_products_keeps():
    from engine.contract.config import Config
    from engine.contract.errors import UsageError
    from engine.trainer import check_memory

    cfg = Config()
    cfg.model = ModelConfig(n_layer=2, n_head=8, n_embd=64, block_size=8192, vocab_size=256)
    cfg.train.batch_size = 16  # 2 x 16 x 8 x 8192^2 fp32 scores: 64 GiB
    flash = device.Runtime(torch.device("cpu"), torch.float32, matmul="highest")
    check_memory(cfg, flash, world_size=1)  # a few GiB of activations: fits
    products = device.Runtime(torch.device("cpu"), torch.float32, matmul="medium")
    with pytest.raises(UsageError, match=r"attention scores .*--train.matmul_precision=highest"):
        check_memory(cfg, products, world_size=1)
