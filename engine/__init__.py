"""gpt-studio's engine: model, tokenizers, config, data, training and generation.

Importing the package is cheap on purpose: torch, tokenizers and pyarrow load only in the modules
that use them, so the studio (which imports just `engine.config` and `engine.protocol`) starts
instantly.
"""

from engine.contract.errors import UsageError

__all__ = ["UsageError"]
__version__ = "0.1.0"
