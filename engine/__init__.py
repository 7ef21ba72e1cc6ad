"""gpt-studio's engine: model, tokenizers, config, data, training and generation.

Importing the package is cheap on purpose: torch, tokenizers and pyarrow load only in the modules
that use them, so the studio (which imports just `engine.contract`) starts instantly.
"""

from engine.contract import __version__
from engine.contract.errors import UsageError

__all__ = ["UsageError", "__version__"]
