"""The studio's panes, one module (or a package of small ones) each, with its own .tcss beside it."""

from studio.panes.config import ConfigPane

__all__ = ["ConfigPane"]
