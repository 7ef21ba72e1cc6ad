"""Before a run starts: continue the run already in its folder or start a new one beside it, and
a fair warning when the config will not fit in the machine's memory. Each question is a dialog the
user answers; nothing starts without the answer. And before attaching: where the run listens."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from textual.app import App

from engine.contract import framing
from engine.contract.config import Config
from engine.contract.render import human
from engine.contract.rundir import RunDir
from engine.contract.sizing import summary
from studio.machine import device_memory
from studio.widgets.dialogs import ChoiceDialog


def holds_run(run_dir: Path) -> bool:
    """What engine.train refuses to start over (the one rule in RunDir)."""
    return RunDir(run_dir).is_run()


def free_name(out_dir: Path, name: str) -> str:
    """`name-2`, `name-3`, ...: the first name whose run directory holds no run."""
    stem, _, number = name.rpartition("-")
    base, n = (stem, int(number)) if stem and number.isdigit() else (name, 1)
    while holds_run(out_dir / f"{base}-{n + 1}"):
        n += 1
    return f"{base}-{n + 1}"


async def continue_or_new(app: App, config: Config) -> tuple[str, bool] | None:
    """The name to train under and whether to resume: the config's own when its folder holds no
    run; else as the user chooses (None: they chose neither)."""
    if not holds_run(config.run_dir):
        return config.name, False
    fresh = free_name(Path(config.out_dir), config.name)
    answer = await app.push_screen_wait(
        ChoiceDialog(
            f"{config.run_dir} already holds a run. Continue it from its latest "
            "checkpoint, or start a new run beside it?",
            [("resume", "Continue it"), ("new", f"New run '{fresh}'")],
        )
    )
    if answer is None:
        return None
    return (fresh, False) if answer == "new" else (config.name, True)


async def fits(app: App, config: Config) -> bool:
    """A config whose memory estimate exceeds the device's is started only when the user says
    so, having seen both figures."""
    need = summary(config)["memory"]["total"]
    have, what = await asyncio.to_thread(device_memory, config.train.device)
    if have is None or need <= have:
        return True
    answer = await app.push_screen_wait(
        ChoiceDialog(
            f"Training {config.name} needs about {human(need, 'B')} of memory (the Config "
            f"pane's estimate); this machine has {human(have, 'B')} of {what}. It will "
            "likely run out. Start anyway?",
            [("start", "Start anyway")],
            cancel="Don't start",
        )
    )
    return answer == "start"


def attach_target(where: str | Path) -> tuple[str, str, str, Path | None] | str:
    """(address, token, name, run folder) of the run to attach to: a run folder (its
    control.json says where it listens) or a control address (unix:PATH, tcp:HOST:PORT, e.g.
    forwarded over ssh; the token from the environment). A folder that is not training now is
    the reason, as text."""
    where = str(where)
    if not Path(where).is_dir():
        return where, os.environ.get(framing.TOKEN_ENV, ""), where, None
    run_dir = Path(where)
    record = RunDir(run_dir).control_record()
    if record is None or not record.alive():
        return (
            f"{run_dir} is not training now (no live control endpoint): open it in the Runs "
            "pane to see its curves, or resume it"
        )
    return record.address, record.token, run_dir.name, run_dir
