"""Plots (matplotlib) from synthetic results: one point per edit, one mean per series and x, drawn where the data says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import EditError
from framework.evaluation.plots import DPI, PALETTE, SIZE, IntervalPoint, main, plot_all, plot_intervals, read_sources


def write_run(folder, rows, t_u=15, k=1, lam=0.6):
    """A run folder with results.csv (id, method, lam, gt/background_l1, edit/l1 and the mean row) and summary.json."""
    folder.mkdir(parents=True)
    lines = ["id,method,lam,gt/background_l1,edit/l1"]
    lines += [f"e{n},framework.EditModule,{lam_},{y:.4f},{y / 2:.4f}" for n, (lam_, y) in enumerate(rows)]
    lines.append("mean,,,0.5,0.25")
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({"parameters": {"lam": lam, "ito": {"update_steps": t_u,
                                                                                         "inner_steps": k}}}))


def test_plot_of_a_metric_against_lam_has_a_point_per_edit(tmp_path):
    write_run(tmp_path / "sweep" / "lam-0.2", [(0.2, 0.10), (0.2, 0.20)], lam=0.2)
    write_run(tmp_path / "sweep" / "lam-0.6", [(0.6, 0.30), (0.6, 0.40), (0.6, 0.50)], lam=0.6)
    write_run(tmp_path / "sweep" / "lam-1.0", [(1.0, 0.80)], lam=1.0)
    write_run(tmp_path / "sweep" / "lam-auto", [(0.35, 0.70), (0.9, 0.05)], lam="auto")
    rows = read_sources([tmp_path / "sweep"])
    assert len(rows) == 8 and {r.params["t_u"] for r in rows} == {15.0}  # 'mean' rows skipped; t_u from summary

    plots = plot_all(rows, tmp_path / "plots")
    assert sorted(p.path.name for p in plots) == ["edit_l1_vs_lam.png", "gt_background_l1_vs_lam.png"]  # lam varies
    info = next(p for p in plots if p.path.name == "gt_background_l1_vs_lam.png")
    assert len(info.points) == 8 and len(info.means) == 3  # 8 edits; fixed-lam means at 0.2, 0.6, 1.0
    assert info.series == {"fixed lam": 6, "lam-auto": 2}
    image = np.asarray(Image.open(info.path).convert("RGB")).astype(int)
    assert image.shape == (round(SIZE[1] * DPI), round(SIZE[0] * DPI), 3)  # 460 x 720 pixels
    # Means left to right by lam at the series' mean heights: 0.15, 0.4, 0.8.
    assert info.means == [(0.2, pytest.approx(0.15)), (0.6, pytest.approx(0.4)), (1.0, pytest.approx(0.8))]
    axes = info.figure.axes[0]
    lines = [line for line in axes.get_lines() if line.get_label() == "fixed lam"]
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [0.2, 0.6, 1.0]  # one line through the 3 means
    auto = [line for line in axes.get_lines() if line.get_label() == "lam-auto"]
    assert len(auto) == 1 and auto[0].get_ydata()[0] == pytest.approx((0.70 + 0.05) / 2)  # its dashed mean level
    assert sum(len(c.get_offsets()) for c in axes.collections) == 8  # one dot per edit
    # Every point is inside the axes and drawn in its series colour where the PNG shows it (display pixels:
    # y grows upwards in matplotlib, downwards in the image).
    height = image.shape[0]
    box = axes.get_window_extent()
    auto_colour = tuple(int(PALETTE[1][i:i + 2], 16) for i in (1, 3, 5))  # series sorted: 'fixed lam', 'lam-auto'
    for n, (x, y) in enumerate(info.points):
        px, py = axes.transData.transform((x, y))
        assert box.x0 < px < box.x1 and box.y0 < py < box.y1
        pixel = tuple(image[int(round(height - py)), int(round(px))])
        assert pixel != (255, 255, 255)
        if n >= 6:  # the lam-auto edits, drawn opaque
            assert max(abs(a - b) for a, b in zip(pixel, auto_colour)) <= 40


def test_t_u_and_k_plots_with_a_line_per_other_parameter(tmp_path):
    for t_u in (5, 15, 25):
        for k in (1, 30):
            write_run(tmp_path / f"update_steps-{t_u}_inner_steps-{k}", [(0.6, t_u / 100 + k / 1000)], t_u=t_u, k=k)
    plots = main([str(tmp_path), "--out", str(tmp_path / "plots"), "--metrics", "edit/l1"])
    by_name = {p.path.name: p for p in plots}
    assert sorted(by_name) == ["edit_l1_vs_k.png", "edit_l1_vs_t_u.png"]
    assert by_name["edit_l1_vs_t_u.png"].series == {"k=1": 3, "k=30": 3}
    assert len(by_name["edit_l1_vs_t_u.png"].means) == 6 and len(by_name["edit_l1_vs_k.png"].means) == 6
    assert by_name["edit_l1_vs_k.png"].series == {"t_u=5": 2, "t_u=15": 2, "t_u=25": 2}


def test_plot_sources_must_hold_results(tmp_path, capsys):
    with pytest.raises(EditError, match="not a results.csv, a run folder"):
        read_sources([tmp_path])
    write_run(tmp_path / "one", [(0.6, 0.1), (0.6, 0.2)])
    assert main([str(tmp_path / "one" / "results.csv")]) == []  # nothing varies: nothing drawn, and it says so
    assert "Nothing to plot" in capsys.readouterr().out


def test_interval_plot_and_the_missing_matplotlib_error(tmp_path, monkeypatch):
    points = [IntervalPoint("unreduced", 480, 0.10, 0.08, 0.12, True), IntervalPoint("seeds4", 80, 0.11, 0.09, 0.14)]
    info = plot_intervals(points, "background L1 vs cost", "UNet evaluations", "gt/background_l1", tmp_path / "i.png")
    assert info.points == [(480, 0.10), (80, 0.11)] and (tmp_path / "i.png").stat().st_size > 1000
    bars = [c for c in info.figure.axes[0].collections if len(c.get_segments()) == 1]
    assert sorted(tuple(c.get_segments()[0][:, 1]) for c in bars) == [(0.08, 0.12), (0.09, 0.14)]  # low..high
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)  # as if matplotlib were missing
    with pytest.raises(EditError, match=r"plots need matplotlib.*pip install 'ito-edit\[eval\]'"):
        plot_intervals(points, "t", "x", "y", tmp_path / "j.png")


def test_fronts_draw_one_line_per_method_with_both_intervals(tmp_path):
    from framework.evaluation.fronts import draw_front

    rows = [{"method": m, "knob": "lam", "value": v, "gt/background_l1": (bg, bg - 0.01, bg + 0.02),
             "gt/target_l1": (t, t - 0.03, t + 0.01)}
            for m, pts in (("ito", [(0.2, 0.03, 0.30), (0.6, 0.02, 0.35), (1.0, 0.01, 0.40)]),
                           ("diffedit", [(0.5, 0.05, 0.33), (0.9, 0.04, 0.38)]))
            for v, bg, t in pts]
    info = draw_front(rows, "gt/background_l1", "gt/target_l1", tmp_path / "front.png")
    assert info.series == {"diffedit (lam)": 2, "ito (lam)": 3} and len(info.points) == 5
    assert Image.open(tmp_path / "front.png").size == (720, 460)
    axes = info.figure.axes[0]
    lines = {bars.get_label(): bars.lines[0] for bars in axes.containers}  # errorbar: (data line, caps, bars)
    assert list(lines["ito (lam)"].get_xdata()) == [0.03, 0.02, 0.01]
    assert list(lines["ito (lam)"].get_ydata()) == [0.30, 0.35, 0.40]
    # Each point has an x and a y interval bar: 5 of each, spanning (x - 0.01, x + 0.02) and (y - 0.03, y + 0.01).
    spans = sorted(tuple(np.round(seg.ravel(), 4)) for c in axes.collections for seg in c.get_segments())
    assert len(spans) == 10
    assert (0.02, 0.3, 0.05, 0.3) in spans and (0.03, 0.27, 0.03, 0.31) in spans
