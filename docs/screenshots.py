"""Regenerate the studio screenshots in docs/: `python docs/screenshots.py`.

Drives the real app headless, so the pictures show what a user sees, not a mock-up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from studio.app import StudioApp

DOCS = Path(__file__).resolve().parent
SIZE = (130, 40)


async def config_pane() -> None:
    app = StudioApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")  # the mini preset: GPT-2 small's shape
        app.query_one("#field-model-n_layer").editor.focus()
        await pilot.pause()
        app.save_screenshot("config-pane.svg", path=str(DOCS))


if __name__ == "__main__":
    asyncio.run(config_pane())
