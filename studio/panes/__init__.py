"""The studio's panes, one module each with its own .tcss beside it."""

from studio.panes.config import ConfigPane

__all__ = ["ConfigPane"]
