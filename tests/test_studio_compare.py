"""Comparing runs in the Runs pane, and the chart options every chart has."""

from __future__ import annotations

from pathlib import Path

from studio_helpers import RecordingApp, drive, finished_run, until
from textual.pilot import Pilot

from engine.contract import events as p
from engine.contract.config import Config
from studio.widgets.charts import Series, draw, ema
from studio.widgets.compare import config_differences


def test_two_finished_runs_are_overlaid_by_step_or_tokens_and_their_configs_diffed(tmp_path):
    runs = tmp_path / "runs"
    finished_run(runs / "slow", lr=1e-3, pace=0.995)
    finished_run(runs / "fast", lr=3e-3, pace=0.990)
    config = Config(out_dir=str(runs))

    async def test(app: RecordingApp, pilot: Pilot) -> None:
        pane = app.runs_pane
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(pane.runs) == 2, "both runs")
        assert not pane.check_action("compare", ())  # nothing marked yet
        await pilot.press("space", "down", "space")
        assert pane.marked == {runs / "slow", runs / "fast"}
        assert pane.table.get_row_at(0)[-1] == pane.table.get_row_at(1)[-1] == "●"
        await pilot.press("v")
        compare = pane.compare
        await until(pilot, lambda: compare.display and len(compare.runs) == 2, "the comparison")
        assert not pane.view.display
        chart = compare.chart
        names = sorted(chart.series)
        assert names == ["fast train", "fast val", "slow train", "slow val"]
        assert chart.series["fast train"].xs[-1] == 300 and len(chart.series["slow val"].xs) == 3
        # the config keys they differ in, and nothing else
        rows = [compare.table.get_row_at(i) for i in range(compare.table.row_count)]
        assert [r[0] for r in rows] == ["train.lr"]
        assert sorted(rows[0][1:]) == ["0.001", "0.003"]

        await pilot.press("t")  # x by tokens seen: 8192 tokens a step
        assert compare.x_by == "tokens" and chart.series["fast train"].xs[-1] == 300 * 8192
        await pilot.press("l", "e")
        assert chart.log_y and chart.smooth > 0

        await pilot.press("enter")  # one run again, in the run view
        await until(pilot, lambda: pane.view.display and pane.view.last(p.Done), "one run")
        assert not compare.display

    drive(test, config=config)


def test_config_differences_name_only_the_keys_that_differ():
    a = {"name": "a", "train": {"lr": 1e-3, "seed": 1}, "model": {"n_layer": 4}}
    b = {"name": "b", "train": {"lr": 3e-3, "seed": 1}, "model": {"n_layer": 4, "bias": True}}
    assert config_differences([a, b]) == [
        ("model.bias", ["-", "True"]),
        ("train.lr", ["0.001", "0.003"]),
    ]
    assert config_differences([a, a]) == []


def test_ema_smooths_toward_the_trend_and_keeps_the_first_point():
    assert ema([1.0, 1.0, 1.0], 0.9) == [1.0, 1.0, 1.0]
    smoothed = ema([0.0, 10.0, 0.0, 10.0], 0.5)
    assert smoothed == [0.0, 5.0, 2.5, 6.25]


def test_log_scale_and_smoothing_are_named_in_the_title_and_change_the_drawing():
    line = Series("train")
    for step in range(1, 60):
        line.add(step, 10.0 / step + (0.3 if step % 2 else 0.0))
    plain = draw("loss", [line], 60, 14)
    logged = draw("loss", [line], 60, 14, log_y=True)
    smooth = draw("loss", [line], 60, 14, smooth=0.9, smoothed=frozenset({"train"}))
    assert plain.plain.splitlines()[0].strip() == "loss"
    assert "(log)" in logged.plain and "(ema 0.9)" in smooth.plain
    assert len({plain.plain, logged.plain, smooth.plain}) == 3
    assert "•" in smooth.plain  # the raw points stay, faint, behind the average


def test_a_run_without_metrics_compares_as_an_empty_curve(tmp_path: Path):
    from engine.contract.rundir import read_curves

    folder = tmp_path / "empty"
    folder.mkdir()
    curves = read_curves(folder)
    assert curves.train == [] and curves.val == [] and curves.config == {}
