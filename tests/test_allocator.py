"""A training process keeps the memory its steps free: the next step reuses it without page
faults (counted by the kernel, so the test does not depend on timing)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.allocator import keep_freed_memory

ROOT = Path(__file__).resolve().parent.parent
# training steps of a small GPT at the Shakespeare-char width: activations of up to 1.5 MiB
# allocated and freed every step
STEPS = textwrap.dedent("""
    import resource, sys, torch
    from engine.allocator import keep_freed_memory
    from engine.contract.config import ModelConfig
    from engine.model import GPT
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=65))
    x = torch.randint(0, 65, (12, 64))
    def step():
        model(x, x)[1].backward()
    for _ in range(10):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
""")


def faults_per_step(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not keep_freed_memory(), reason="needs glibc's malloc (Linux)")
def test_kept_memory_spares_every_step_its_page_faults():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default > 100  # measured 540-820: the step's large blocks faulted in again
    assert kept * 10 < default  # measured 0-20
