"""framework.evaluation.cost_quality (`python -m framework cost-quality`) on hand-made sweep folders: cached masks
charged, the within-noise test, the pick."""

from __future__ import annotations

import json

import pytest
import yaml


@pytest.fixture(scope="module")
def script():
    from framework.evaluation import cost_quality

    return cost_quality


def _run(root, name, lam, mask, edits):
    """A run folder: run.yaml and one result.json per edit; `edits` = [(mask_source, mask UNet, metrics)]."""
    folder = root / name
    folder.mkdir()
    (folder / "run.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"lam": lam, "mask": mask}}}))
    for i, (source, mask_evals, metrics) in enumerate(edits):
        unet = {"inversion": 25, "final": 50, **({"mask": mask_evals} if source == "estimated" else {})}
        record = {"id": f"e{i}", "mask_source": source, "unet_evaluations": unet, "metrics": metrics,
                  "seconds": {"mask": 1.0 if source == "estimated" else 0.0, "total": 3.0}}
        (folder / f"e{i}").mkdir()
        (folder / f"e{i}" / "result.json").write_text(json.dumps(record))


def _metrics(bg, recall):
    return {"gt/background_l1": bg, "gt/target_l1": 0.2, "toy/new_class": 1.0, "mask/recall": recall,
            "mask/iou": 0.2}


def test_pairs_edits_charges_cached_masks_and_picks_the_cheapest_within_noise(script, tmp_path):
    n = 40
    full, small, tiny = {"seeds": 10}, {"seeds": 4}, {"seeds": 1}
    noise = [0.001 * ((7 * i) % 5 - 2) for i in range(n)]  # mean 0, a few thousandths each way
    _run(tmp_path, "unreduced", 0.6, full, [("estimated", 480, _metrics(0.04, 0.8)) for _ in range(n)])
    _run(tmp_path, "lam1_unreduced", 1.0, full, [("cached", 0, _metrics(0.03, 0.8)) for _ in range(n)])
    _run(tmp_path, "seeds4", 0.6, small, [("estimated", 192, _metrics(0.04 + e, 0.8)) for e in noise])
    _run(tmp_path, "seeds1", 0.6, tiny, [("estimated", 48, _metrics(0.04, 0.8 - 0.1 + e)) for e in noise])
    result = script.analyse(tmp_path, resamples=500)
    rows = {r["run"]: r for r in result["runs"]}
    # the lam 1 run read its masks from the cache: charged the 480 samples the unreduced run spent on them
    assert rows["lam1_unreduced"]["unet"]["mask"] == 480 and rows["lam1_unreduced"]["unet"]["total"] == 555
    assert rows["lam1_unreduced"]["reference"] == "lam1_unreduced"
    bg = rows["seeds4"]["metrics"]["gt/background_l1"]
    assert bg["diff_low"] < 0 < bg["diff_high"] and not bg["worse"] and rows["seeds4"]["within_noise"]
    recall = rows["seeds1"]["metrics"]["mask/recall"]
    assert recall["diff"] == pytest.approx(-0.1, abs=1e-3) and recall["worse"]
    assert not rows["seeds1"]["within_noise"]
    assert result["cheapest_within_noise"] == "seeds4"  # seeds1 is cheaper but loses recall
    assert "| seeds1 |" in script.format_table(result) and "**worse**" in script.format_table(result)
    png = script.plot(result, tmp_path / "plot.png")
    assert png.is_file()
