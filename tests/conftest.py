import os
from pathlib import Path

# Tiny models gain nothing from a thread pool, and on a busy machine the pool waits at every op
# for a worker the OS has put aside: 30 steps of the tiny test config took 55 s on two threads
# on a loaded 2-core machine and 1.5 s on one. So every test, and every engine process a test
# starts (they inherit the environment), computes on one thread.
os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def one_thread():
    """Every test already runs on one thread (above); this name stays for tests written on
    branches that predate that, and can go once none asks for it."""


def wait_until(condition, timeout: float, what: str):
    """Wait for `condition()` to hold (its truthy value is returned), checking often; fail
    naming `what` after `timeout` seconds. The timeout is a hang guard, never the thing tested."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.01)
    return value


# --- studio tests (helpers in tests/studio_helpers.py) ------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine_on_path(monkeypatch):
    """Engine subprocesses the studio starts import this checkout's engine, whatever is
    installed."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


@pytest.fixture(autouse=True)
def studio_state_home(tmp_path_factory, monkeypatch):
    """The studio remembers the last config under $XDG_CONFIG_HOME: never the user's own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
