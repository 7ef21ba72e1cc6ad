"""What a config costs, in the figures a person decides with: size, tokens, memory, FLOPs.

Recomputed from the config alone (engine.contract.sizing.summary) on every valid edit, so the effect of a
change is seen before anything is built.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Static

from engine.contract.config import Config
from engine.contract.render import human
from engine.contract.sizing import summary, vocab_key

MEMORY_PARTS = {
    "params": "weights",
    "grads": "gradients",
    "optimizer": "AdamW moments",
    "activations": "activations",
}


class ConfigSummary(Vertical):
    """The size and cost of `config`, and the list of `problems` when the form has any."""

    config: reactive[Config | None] = reactive(None)
    """The config to describe; when the form is invalid, the last valid one."""
    problems: reactive[dict[str, str]] = reactive(dict)
    """Faults by dotted key; shown on top, since the fields they belong to may be scrolled away."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.figures: dict[str, Any] = {}
        """The last `engine.contract.sizing.summary` shown: tests and other panes read numbers here."""
        self.known_vocab: dict[str, int] = {}
        """Tokenizer sizes that prepared data reported, by `vocab_key`: used instead of a guess."""

    def know_vocab(self, config: Config, vocab_size: int) -> None:
        """Prepared data for `config` has this many token ids: show figures from it."""
        self.known_vocab[vocab_key(config)] = vocab_size
        self.watch_config(self.config)

    def compose(self) -> ComposeResult:
        yield Static(id="summary-problems", markup=False)
        yield Static(id="summary-figures", markup=False)

    def watch_problems(self, problems: dict[str, str]) -> None:
        box = self.query_one("#summary-problems", Static)
        box.display = bool(problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        lines = [count, *(f"  {key}" for key in problems), "figures below: the last valid config"]
        box.update("\n".join(lines))

    def watch_config(self, config: Config | None) -> None:
        if config is None:
            return
        self.figures = summary(config, self.known_vocab.get(vocab_key(config)))
        text, box = render_figures(self.figures), self.query_one("#summary-figures", Static)
        # same number of lines: skip the screen-wide relayout, which makes typing lag
        box.update(text, layout=text.count("\n") != str(box.content).count("\n"))


def render_figures(s: dict[str, Any]) -> str:
    """Aligned lines of text, so the panel reads like `python -m engine.config`."""
    mem = s["memory"]
    guess = s["vocab_is_guess"]
    rows = [
        ("parameters", human(s["params"])),
        ("  without embeddings", human(s["params_no_embedding"])),
        ("vocabulary", f"{s['vocab_size']}" + (" (guess*)" if guess else "")),
        ("tokens per step", human(s["tokens_per_step"])),
        ("tokens in the run", human(s["train_tokens"])),
        ("FLOPs per token", human(s["flops_per_token"], "FLOP")),
        ("warmup", f"{s['warmup_steps']:,} steps" + (" (cut*)" if s["adjustments"] else "")),
        ("samples every", f"{s['sample_interval']:,} steps"),
        ("checkpoints every", f"{s['checkpoint_interval']:,} steps"),
        ("", ""),
        ("memory (training)", human(mem["total"], "B")),
        *[(f"  {label}", human(mem[key], "B")) for key, label in MEMORY_PARTS.items()],
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name:<{width}}{value}" if name else "" for name, value in rows]
    notes = [f"* {a.key} = {a.value:,} is {a.reason}" for a in s["adjustments"]]
    if guess:
        notes.append("* a char vocabulary is known only once the corpus is read")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
