"""Plots from synthetic results.csv files: one point per edit, one mean per series and x, at the right pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import EditError
from framework.evaluation.plots import MARGIN, PALETTE, SIZE, main, nice_ticks, plot_all, read_sources


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
    assert image.shape == (SIZE[1], SIZE[0], 3)
    # Means left to right by lam, at heights 0.15, 0.4, 0.8 (pixel y grows downwards).
    xs, ys = zip(*info.means)
    assert xs[0] < xs[1] < xs[2] and ys[0] > ys[1] > ys[2]
    # x is linear in lam: 0.2 -> 0.6 is half of 0.2 -> 1.0.
    assert abs((xs[1] - xs[0]) - (xs[2] - xs[0]) / 2) <= 1
    # Every point lies in the plot area and is drawn in a series colour (lightened for fixed-lam points).
    left, right, top, bottom = MARGIN[0], SIZE[0] - MARGIN[1], MARGIN[2], SIZE[1] - MARGIN[3]
    for x, y in info.points:
        assert left < x < right and top < y < bottom
        assert tuple(image[y, x]) != (255, 255, 255)
    auto_colour = PALETTE[1]  # series sorted by label: 'fixed lam', then 'lam-auto'
    assert all(tuple(image[y, x]) == auto_colour for x, y in info.points[-2:])


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


def test_nice_ticks():
    assert nice_ticks(-0.05, 1.05) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(4, 26) == [5, 10, 15, 20, 25]
