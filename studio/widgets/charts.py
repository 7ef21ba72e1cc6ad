"""Line charts drawn by plotext, and the four charts of a training run.

plotext draws into one module-level figure, so a chart is drawn start to finish on the event
loop's thread, never from a worker. Drawing costs a few milliseconds, so points only mark a
chart stale, and one timer redraws the stale charts of a RunCharts together every two seconds, in
one screen update: a run reporting a hundred events a second costs the same as one reporting
one, and watching a run takes a few percent of one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import plotext
from rich.style import Style
from rich.text import Span, Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widget import Widget

from engine.contract import events as p
from engine.contract import framing
from engine.contract.render import human

REDRAW_S = 2.0
MARKERS = ("braille", "dot")  # the second series stands out from the first in monochrome too


class Series:
    """One named line: x and y, growing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.xs: list[float] = []
        self.ys: list[float] = []

    def add(self, x: float, y: float) -> None:
        if self.xs and x <= self.xs[-1]:
            # a resumed run reports steps it had reported before: keep the newer values
            cut = next(i for i, old in enumerate(self.xs) if old >= x)
            del self.xs[cut:], self.ys[cut:]
        self.xs.append(x)
        self.ys.append(y)


def thin(xs: list[float], ys: list[float], most: int) -> tuple[list[float], list[float]]:
    """At most about `most` points, evenly picked, always keeping the latest."""
    if len(xs) <= most:
        return xs, ys
    stride = -(-len(xs) // most)
    keep = list(range(len(xs) - 1, -1, -stride))[::-1]
    return [xs[i] for i in keep], [ys[i] for i in keep]


Format = Callable[[float], str]


def nice_ticks(lo: float, hi: float, most: int) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, most)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [float(f"{first + i * step:.12g}") for i in range(count)]


def draw(title: str, series: list[Series], width: int, height: int, fmt: Format = human) -> Text:
    """A plotext chart as Rich text, without backgrounds so it sits on the studio's theme.

    Ticks are placed here rather than by plotext, so steps read as whole numbers and each
    chart's values in the units a person reads them in (loss 2.31, lr 3e-4, 52K tokens/s).
    """
    fig = plotext.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("dark")
    filled = [s for s in series if s.xs]
    for s, marker in zip(filled, MARKERS, strict=False):
        xs, ys = thin(s.xs, s.ys, 2 * width)
        signal = fig.signal(xs, ys, marker=marker)
        signal.lines()
        fig.draw(signal)
    if filled:  # limits first: plotext spreads ticks evenly unless it knows the range
        x0 = min(s.xs[0] for s in filled)
        x1 = max(s.xs[-1] for s in filled)
        y0 = min(min(s.ys) for s in filled)
        y1 = max(max(s.ys) for s in filled)
        pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
        x1 = x1 if x1 > x0 else x0 + 1
        fig.ruler(0).lim(x0, x1)
        fig.ruler(1).lim(y0, y1)
        xt = nice_ticks(x0, x1, max(2, width // 12))
        yt = nice_ticks(y0, y1, max(2, (height - 4) // 2))
        fig.ruler(0).ticks(xt, [f"{x:g}" if abs(x) < 1e5 else human(x) for x in xt])
        fig.ruler(1).ticks(yt, [fmt(y) for y in yt])
    names = " · ".join(f"{s.name} {'⣿' if i == 0 else '•'}" for i, s in enumerate(filled))
    fig.title(f"{title}  {names}" if len(filled) > 1 else title)
    text = Text.from_ansi(fig.build().string())
    text.spans = [_no_background(span) for span in text.spans]
    return text


def _no_background(span: Span) -> Span:
    style = span.style if isinstance(span.style, Style) else Style.parse(span.style)
    return Span(span.start, span.end, Style(color=style.color, bold=style.bold))


class Chart(Widget):
    """A chart of a few series; `add` marks it stale, and `redraw_if_stale` draws it again."""

    DEFAULT_CSS = """
    Chart { height: 1fr; width: 1fr; }
    """

    def __init__(
        self, title: str, names: tuple[str, ...], fmt: Format = human, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.title = title
        self.fmt = fmt
        self.series = {name: Series(name) for name in names}
        self._stale = False
        self._drawn: tuple[int, int, int] | None = None
        self._text = Text()
        self._version = 0

    def add(self, name: str, x: float, y: float | None) -> None:
        if y is None:
            return  # a diverged loss or an unknown figure: a gap, not a point
        self.series[name].add(x, y)
        self._stale = True  # drawn by the timer, not now

    def clear(self) -> None:
        for s in self.series.values():
            s.xs.clear()
            s.ys.clear()
        self._version += 1
        self.refresh()

    def retitle(self, title: str) -> None:
        if title != self.title:
            self.title = title
            self._version += 1
            self.refresh()

    @property
    def points(self) -> int:
        """How many points the chart holds: tests and the status line read it."""
        return sum(len(s.xs) for s in self.series.values())

    def redraw_if_stale(self) -> None:
        # a hidden chart waits: when its pane is shown, the first paint reuses the last
        # drawing, so switching panes never waits for plotext; the next tick brings it up to date
        if self._stale and self.region.area:
            self._stale = False
            self._version += 1
            self.refresh()

    def render(self) -> Text:
        width, height = self.size
        key = (self._version, width, height)
        if not self.points:
            self._text = Text.assemble((self.title, "bold"), "\n\nno points yet")
        elif key != self._drawn and width >= 20 and height >= 6:
            self._text = draw(self.title, list(self.series.values()), width, height, self.fmt)
            self._drawn = key
        elif width < 20 or height < 6:
            self._text = Text(self.title)
        return self._text


class RunCharts(Grid):
    """Loss (train and validation), learning rate, tokens per second and memory of one run."""

    DEFAULT_CSS = """
    RunCharts { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    """
    CHARTS: ClassVar[dict[str, tuple[str, tuple[str, ...], Format]]] = {
        "loss": ("loss", ("train", "val"), lambda y: f"{y:.2f}"),
        "lr": ("learning rate", ("lr",), lambda y: f"{y:.1e}".replace("e-0", "e-")),
        "speed": ("tokens/s", ("tok/s",), human),
        "memory": ("memory GB", ("mem",), lambda y: f"{y:.3g}"),
    }

    def compose(self) -> ComposeResult:
        for key, (title, names, fmt) in self.CHARTS.items():
            yield Chart(title, names, fmt, id=f"chart-{key}")

    def on_mount(self) -> None:
        self.set_interval(REDRAW_S, self._redraw)

    def _redraw(self) -> None:
        for chart in self.query(Chart):
            chart.redraw_if_stale()

    def chart(self, key: str) -> Chart:
        return self.query_one(f"#chart-{key}", Chart)

    def add(self, event: p.Event) -> None:
        """Take the figures a step or an evaluation carries; other events are not charted."""
        if isinstance(event, p.Step):
            self.chart("loss").add("train", event.step, framing.finite_or_none(event.loss))
            self.chart("lr").add("lr", event.step, event.lr)
            self.chart("speed").add("tok/s", event.step, event.tokens_per_s)
            self.chart("memory").add("mem", event.step, event.mem_gb)
        elif isinstance(event, p.Eval):
            self.chart("loss").add("val", event.step, framing.finite_or_none(event.val_loss))

    def clear(self) -> None:
        for chart in self.query(Chart):
            chart.clear()

    def set_memory_title(self, title: str) -> None:
        self.chart("memory").retitle(title)
