"""Run control: the studio's commands and the process's signals, agreed across ranks.

Only rank 0 hears the studio, and a signal may reach the ranks at different steps, so every
decision to pause, resume, stop, save or sample is shared before any rank acts on it. Nothing
here survives a restart: a resumed run starts unpaused, so there is no state_dict.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine import distributed, metrics, remote
from engine.contract import events as p


class RunControl:
    def __init__(
        self, link: remote.StudioLink | None, group: distributed.Group, reporter: metrics.Reporter
    ) -> None:
        self.link = link
        self.group = group
        self.reporter = reporter
        self.stop = ""  # why the loop should end early: "signal" or "stopped", as all ranks agreed
        self.signalled = False  # SIGINT/SIGTERM seen here: a request, until the ranks agree
        self.paused = False
        self.studio = link is not None  # whether rank 0's studio is connected, as ranks agreed

    def agree(self, wait: float = 0.0) -> list[p.Command]:
        """The studio's latest commands (waiting up to `wait` seconds for one), and a stop any
        rank has seen, made the same on every rank."""
        commands: list[p.Command] = []
        if self.link is not None:
            if wait:
                command = self.link.wait(wait)
                commands = [command] if command is not None else []
            else:
                commands = self.link.poll()
        connected = self.link is not None and self.link.connected
        asked = "signal" if self.signalled else self.stop
        commands, self.stop, self.studio = self.group.share(commands, asked, connected)
        return commands

    def apply(self, command: p.Command, step: int) -> bool:
        """Carry out a pause, resume or stop; False for a command the trainer must do."""
        if isinstance(command, p.Pause):
            if not self.paused:
                self.paused = True
                self.reporter.emit(p.Paused(step=step))
        elif isinstance(command, p.Resume):
            if self.paused:
                self.paused = False
                self.reporter.emit(p.Resumed(step=step))
        elif isinstance(command, p.Stop):
            self.stop, self.paused = "stopped", False
        else:
            return False
        return True

    @property
    def holding(self) -> bool:
        """Still paused: not stopped nor signalled, and a studio is there to resume us."""
        return self.paused and not self.stop and self.studio

    @contextmanager
    def signals(self, at_once: bool = True) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step, then save and exit cleanly; a second SIGINT
        stops at once when `at_once` — not under torchrun, which passes the terminal's Ctrl-C
        on to processes that already had it, and whose SIGKILL after a grace period is the
        hard stop."""

        def handler(signum: int, frame: Any) -> None:
            if self.signalled and signum == signal.SIGINT and at_once:
                raise KeyboardInterrupt
            self.signalled = True  # acted on after the current step, when `agree` sees it

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
