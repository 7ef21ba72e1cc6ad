from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a thread pool, and on a busy machine the pool waits at
    every op for a worker the OS has put aside: one thread keeps such tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
