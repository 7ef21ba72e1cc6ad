"""The text both sides show for the same facts: numbers, durations, event lines, samples and
progress, and the end-of-text marker. The console, samples.txt, `engine.generate` and the
studio's panes call these, so a sample or a progress line reads the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from engine.contract import events as p

EOT = "<|endoftext|>"  # the document separator every tokenizer reserves


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'. Unit 'B' takes binary prefixes (MiB), 'FLOP' SI ones (GFLOP)."""
    base, prefixes = 1000, ("", "K", "M", "B", "T")
    if unit == "B":
        base, prefixes = 1024, ("", "Ki", "Mi", "Gi", "Ti")
    elif unit:
        prefixes = ("", "K", "M", "G", "T", "P", "E")
    for prefix in prefixes:
        if abs(n) < base or prefix == prefixes[-1]:
            break
        n /= base
    number = f"{n:.3g}" if prefix else f"{n:g}"
    return f"{number} {prefix}{unit}" if unit else f"{number}{prefix}"


def duration(seconds: float | None) -> str:
    """90 -> '1m30s', 5400 -> '1h30m'; None (not known yet) -> '-'."""
    if seconds is None:
        return "-"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def step_line(e: p.Step, max_steps: int) -> str:
    mfu = f"{100 * e.mfu:4.1f}%" if e.mfu is not None else "  - "
    return (
        f"step {e.step:>{len(str(max_steps))}}/{max_steps} | loss {e.loss:.4f} | lr {e.lr:.2e} | "
        f"{e.tokens_per_s / 1000:7.1f}K tok/s | {e.step_ms:6.1f} ms | mfu {mfu} | "
        f"mem {e.mem_gb:.2f} GB | eta {duration(e.eta_s)}"
    )


def event_line(event: p.Event, max_steps: int) -> str | None:
    """The one readable line an event gets on the console (None: it is shown another way)."""
    if isinstance(event, p.Step):
        return step_line(event, max_steps)
    if isinstance(event, p.Eval):
        return f"eval step {event.step}: val loss {event.val_loss:.4f}, ppl {event.ppl:.2f}"
    if isinstance(event, p.Sample):
        return f"sample at step {event.step}:\n{sample_text(event)}\n"
    if isinstance(event, p.Checkpoint):
        best = " (best)" if event.best else ""
        return f"saved {event.path}{best}"
    if isinstance(event, p.Start):
        resumed = f", resuming after step {event.resumed_from}" if event.resumed_from else ""
        return (
            f"run {event.run}: {event.params / 1e6:.2f}M parameters on {event.device} "
            f"({precision(event.dtype, event.matmul_precision, event.device)}), "
            f"{event.tokens_per_step} tokens per step x {event.max_steps} "
            f"steps, world size {event.world_size}{resumed}"
        )
    if isinstance(event, p.Done):
        return f"done at step {event.step} ({event.reason}) after {duration(event.elapsed_s)}"
    if isinstance(event, p.Error):
        return f"error: {event.message}"
    if isinstance(event, p.Log):
        return event.message if event.level == "info" else f"{event.level}: {event.message}"
    if isinstance(event, p.Adjusted):
        return f"note: {event.key} = {event.value} is {event.reason}: using {event.used}"
    if isinstance(event, p.Paused):
        return f"paused after step {event.step}"
    if isinstance(event, p.Resumed):
        return f"resumed at step {event.step}"
    if isinstance(event, p.DataReady):
        counts = (
            f"{event.train_tokens:,} train and {event.val_tokens:,} validation tokens "
            f"from {event.documents:,} documents"
        )
        where = "using prepared data in" if event.cached else "prepared"
        return f"{where} {event.out_dir} ({counts})"
    return None


class Rates:
    """Speed and time left of a Progress task, measured from its first event."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, float, int]] = {}

    def describe(self, e: p.Progress) -> tuple[str, float | None]:
        first = self.first.setdefault(e.task, (e.time, e.done, e.tokens or 0))
        elapsed = e.time - first[0]
        if elapsed <= 0:
            return "", None
        rate = (e.done - first[1]) / elapsed
        parts = [f"{human(rate, e.unit)}/s" if e.unit else f"{rate:.3g}/s"]
        if e.tokens is not None:
            parts.append(f"{human((e.tokens - first[2]) / elapsed)} tok/s")
        eta = (e.total - e.done) / rate if e.total and rate > 0 else None
        return " · ".join(parts), eta


def progress_amount(e: p.Progress, percent: bool = False) -> str:
    """'1.2 MiB of 5 MiB, 300K tokens' (or '24% of 5 MiB, ...'): how far a task has come."""
    amount = human(e.done, e.unit)
    if e.total:
        head = f"{100 * e.done / e.total:3.0f}%" if percent else amount
        amount = f"{head} of {human(e.total, e.unit)}"
    tokens = f", {human(e.tokens)} tokens" if e.tokens is not None else ""
    return amount + tokens


def progress_line(e: p.Progress, rates: Rates | None = None) -> str:
    """'prepare: 24% of 5 MiB, 300K tokens, 1.2 MiB/s, eta 0m03s' (rates: speed and eta)."""
    speed, eta = rates.describe(e) if rates is not None else ("", None)
    line = f"{e.task}: {progress_amount(e, percent=rates is not None)}"
    return line + (f", {speed}, eta {duration(eta)}" if speed else "")


def sample_text(event: p.Sample) -> str:
    """A sample as it reads: the prompt with its continuation."""
    return f"{event.prompt}{event.text}"


def sample_block(event: p.Sample) -> str:
    """A sample with a header naming its step and prompt, for logs, panes and samples.txt."""
    return f"step {event.step} · {event.prompt!r}\n{sample_text(event)}"


def shown_path(path: Path) -> str:
    """A path as a person would type it here: relative to the working directory if inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(path)


def precision(dtype: str, matmul: str = "highest", device: str = "cpu") -> str:
    """How a run's precision reads to a user: its autocast dtype, and what fp32 products do
    where that is not plain fp32 ("float32 with bf16 matmuls")."""
    if dtype == "float32" and matmul == "medium":
        return "float32 with bf16 matmuls"
    if dtype == "float32" and matmul == "high" and device.startswith("cuda"):
        return "float32 with tf32 matmuls"
    return dtype
