"""The config that fine-tunes a finished run to chat, built from the one set of defaults.

The fine-tuning defaults (a lower learning rate, a few hundred steps, eval on held-out
conversations, LoRA's settings) live in presets/sft/chat.toml, which headless users pass to
`python -m engine.train`. The studio's Runs pane builds its config here from the same file, so
the two never drift: only what the chosen run and data decide is set on top.
"""

from __future__ import annotations

import copy
from pathlib import Path

from engine.contract.config import PRESETS_DIR, Config, ConfigError, load, validate

SFT_PRESET = PRESETS_DIR / "sft" / "chat.toml"
SFT_NAME = SFT_PRESET.relative_to(PRESETS_DIR.parent).as_posix()  # presets/sft/chat.toml
CHAT_DATA_HINT = (
    "builtin:chat, or a .jsonl or parquet file (or a glob or folder of them) of "
    '{"messages": [...]} or {"prompt", "completion"} records'
)


def fine_tune_config(run_dir: Path, data: str, name: str = "", include: str = "") -> Config:
    """presets/sft/chat.toml fine-tuning `run_dir` on `data`, beside it in its out_dir.

    The model's shape and tokenizer are the run's (the trainer takes them from its checkpoint
    anyway; the form shows them so its size and memory figures are the real ones). `name`
    defaults to RUN-chat. Raises ConfigError when the run's config cannot be read.
    """
    run_dir = Path(run_dir)
    try:
        run = load(run_dir / "config.toml")
    except ConfigError as err:
        raise ConfigError(f"{run_dir.name} cannot be fine-tuned: {err}") from None
    cfg = load(SFT_PRESET)
    cfg.name = name or f"{run_dir.name}-chat"
    cfg.out_dir = str(run_dir.parent)
    cfg.model = copy.deepcopy(run.model)
    cfg.tokenizer = copy.deepcopy(run.tokenizer)
    cfg.data.source = data
    cfg.data.cache_dir = run.data.cache_dir
    if include:
        cfg.data.include = include
    cfg.train.init_from = str(run_dir)
    return validate(cfg, origin=f"fine-tune of {run_dir.name}")


def preset_data() -> str:
    """The preset's own chat data (builtin:chat): what the studio offers first."""
    return load(SFT_PRESET).data.source
