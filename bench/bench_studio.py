"""Is the studio responsive under load, and does watching a run slow it down?

    python bench/bench_studio.py [--rounds 3] [--steps 150] [--presses 40]

(a) Key press to repaint, in the real app (run_test), while a stand-in engine
    (tests/fake_engine.py) pushes about 110 events a second through the studio's socket: the
    time from a key press to the first screen update that shows its effect, for a key handled
    in the Train pane (save now: a line in the event log), typing in the Chat prompt, and
    switching between the Train and Chat panes.
(b) Training tokens/s of a Tiny-like config headless (`python -m engine.train CONFIG`) and with
    the studio attached (started from the Train pane, which shows every event and draws the
    charts), in interleaved rounds, same config and steps. tokens/s is the engine's own figure
    (step time only), the median over each run's step events after the first. The studio
    passes when attached/headless >= 0.97.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT)  # engine subprocesses import this checkout

from engine.contract import events as p  # noqa: E402
from engine.contract.config import Config, load_preset, save  # noqa: E402
from engine.contract.rundir import MetricsTail  # noqa: E402
from studio.app import StudioApp  # noqa: E402
from studio.panes.chat import ChatPane  # noqa: E402
from studio.panes.train import IDLE, TrainPane  # noqa: E402

FAKE_ENGINE = ROOT / "tests" / "fake_engine.py"
SIZE = (120, 40)


class RepaintProbe:
    """Notes when the screen is next written to the terminal with a condition holding."""

    def __init__(self, app: StudioApp) -> None:
        self.condition = None
        self.hit: float | None = None
        original = app._display

        def display(screen, renderable) -> None:
            original(screen, renderable)
            if self.condition is not None and self.condition():
                self.hit = time.perf_counter()
                self.condition = None

        app._display = display  # type: ignore[method-assign]

    async def press(self, pilot, key: str, shown) -> float:
        """Seconds from pressing `key` to the first repaint after which `shown()` holds."""
        self.hit, self.condition = None, shown
        start = time.perf_counter()
        await pilot.press(key)
        deadline = start + 10
        while self.hit is None:
            assert time.perf_counter() < deadline, f"no repaint showed the effect of {key}"
            await asyncio.sleep(0.002)
        return self.hit - start


def summary(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms"


async def latency(presses: int, workdir: Path) -> dict[str, list[float]]:
    os.environ["FAKE_ENGINE_RATE"] = "100"  # steps/s; with an eval every tenth: 110 events/s
    cfg = Config(name="latency", out_dir=str(workdir / "runs"))
    app = StudioApp(cfg)
    out: dict[str, list[float]] = {"train: save now": [], "chat: typing": [], "switch pane": []}
    async with app.run_test(size=SIZE) as pilot:
        probe = RepaintProbe(app)
        train = app.query_one(TrainPane)
        train.engine_command = lambda args: [sys.executable, str(FAKE_ENGINE), *args]
        await pilot.press("ctrl+t", "s")
        while train.step < 200:  # the flood is on, the charts have plenty to draw
            await asyncio.sleep(0.05)
        first = train.events_seen
        began = time.perf_counter()
        for _ in range(presses):
            n = len(train.log_lines)
            ms = await probe.press(pilot, "c", lambda n=n: len(train.log_lines) > n)
            out["train: save now"].append(1000 * ms)
            await asyncio.sleep(0.05)
        await pilot.press("ctrl+l")
        prompt = app.query_one("#chat-prompt")
        for i in range(presses):
            n = len(prompt.value)
            ms = await probe.press(pilot, "abcdefghij"[i % 10], lambda n=n: len(prompt.value) > n)
            out["chat: typing"].append(1000 * ms)
            await asyncio.sleep(0.05)
        tabs = app.query_one("TabbedContent")
        for i in range(presses):
            key, pane = ("ctrl+t", "train") if i % 2 == 0 else ("ctrl+l", "chat")
            ms = await probe.press(pilot, key, lambda pane=pane: tabs.active == pane)
            out["switch pane"].append(1000 * ms)
            await asyncio.sleep(0.05)
        rate = (train.events_seen - first) / (time.perf_counter() - began)
        print(f"events applied during the key presses: {rate:.0f}/s")
        assert isinstance(app.query_one(ChatPane), ChatPane)
        await pilot.press("ctrl+t", "x")
        while train.state != IDLE:
            await asyncio.sleep(0.05)
    return out


def tiny_like(workdir: Path, steps: int) -> Config:
    cfg = load_preset("tiny")
    cfg.out_dir = str(workdir / "runs")
    cfg.data.cache_dir = str(workdir / "cache")
    cfg.train.device = "cpu"
    cfg.train.max_steps = steps
    cfg.train.warmup_steps = 10
    cfg.train.eval_interval = cfg.train.sample_interval = steps  # once, at the end
    cfg.checkpoint.interval = steps
    return cfg


def tokens_per_s(run_dir: Path) -> float:
    steps = [e for e in MetricsTail(run_dir / "metrics.jsonl").read_new() if isinstance(e, p.Step)]
    return statistics.median(e.tokens_per_s for e in steps[1:])


def headless(cfg: Config, workdir: Path) -> float:
    path = save(cfg, workdir / f"{cfg.name}.toml")
    subprocess.run(
        [sys.executable, "-m", "engine.train", str(path)],
        check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    return tokens_per_s(cfg.run_dir)


async def attached(cfg: Config) -> float:
    app = StudioApp(cfg)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+t")
        train = app.query_one(TrainPane)
        await train.start_run(cfg)
        while train.state != IDLE:
            await asyncio.sleep(0.1)
        assert train.last_exit is not None and train.last_exit.code == 0, train.log_lines[-5:]
        assert train.events_seen > cfg.train.max_steps // cfg.log.interval
    return tokens_per_s(cfg.run_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--presses", type=int, default=40)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    try:
        print("(a) key press to repaint with ~110 events/s arriving")
        for name, ms in asyncio.run(latency(args.presses, workdir)).items():
            print(f"  {name:<16} {summary(ms)}")

        print(f"(b) Tiny-like training, {args.steps} steps, tokens/s (engine's step time)")
        prepared = save(tiny_like(workdir, args.steps), workdir / "prepare.toml")
        subprocess.run(  # the shards are cached before anything is timed
            [sys.executable, "-m", "engine.data", "prepare", str(prepared)],
            check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        ratios = []
        for r in range(args.rounds):
            rates = {}
            for mode in ("headless", "studio") if r % 2 == 0 else ("studio", "headless"):
                cfg = tiny_like(workdir, args.steps)
                cfg.name = f"{mode}-{r}"
                rates[mode] = (
                    headless(cfg, workdir) if mode == "headless" else asyncio.run(attached(cfg))
                )
            ratios.append(rates["studio"] / rates["headless"])
            print(
                f"  round {r + 1}: headless {rates['headless']:8.0f}   studio "
                f"{rates['studio']:8.0f}   ratio {ratios[-1]:.3f}"
            )
        if not ratios:
            return 0
        ratio = statistics.median(ratios)
        print(f"  median ratio studio/headless: {ratio:.3f} (required >= 0.97)")
        return 0 if ratio >= 0.97 else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
