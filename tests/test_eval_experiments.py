"""Every shipped evaluation config (experiments/eval/*.yaml) runs through `python -m framework.evaluation.sweep` on the
tiny models with a tiny edit count; every run of every sweep is also built and instantiated (`--check`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from framework.core.settings import AutoLam
from framework.evaluation.sweep import main as sweep
from tests.conftest import ROOT
from tests.framework.test_datasets import imagenet  # noqa: F401 - fixtures
from tests.framework.test_metrics import biased_classifier, tiny_clip  # noqa: F401 - fixtures
from tests.framework.test_piebench import pie, squeezenet, tiny_clip_folder, tiny_dino  # noqa: F401 - fixtures

EVAL = ROOT / "experiments" / "eval"
SMALL = ["--model.sampling.steps", "5", "--model.mask.seeds", "2", "--model.ito.update_steps", "3",
         "--model.guidance.update_steps", "3"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


def toy_sets(tiny_dirs, cache: Path, edits: int = 2) -> list[str]:
    """--set arguments swapping the toy model for the tiny one and asking for `edits` edits."""
    sets = {"model.backbone.pretrained": tiny_dirs["sd"], "model.conditioners.0.pretrained": tiny_dirs["pose"],
            "model.conditioners.1.pretrained": tiny_dirs["scribble"], "data.edits": edits, "data.cache_dir": cache,
            "model.mask.cache_dir": cache / "masks"}
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_eval_config_is_shipped():
    assert {p.stem for p in EVAL.glob("*.yaml")} == {"toy_table1", "imagenet_table1", "lam_sweep", "tu_k_sweep",
                                                 "toy_diagnosis", "toy_table1_true_mask", "fronts", "inversions",
                                                 "piebench", "cost", "background_study", "cost150"}


def test_toy_table1_true_mask_gives_every_method_the_true_edit_region(tmp_path, tiny_dirs):
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out = tmp_path / "true"
    args = [str(EVAL / "toy_table1_true_mask.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache")]
    sweep([*args, "--check"])
    sweep([*args, "--only", "diffedit_1.0", "--only", "ito_full", "--", *SMALL])
    assert not (tmp_path / "cache" / "masks").exists() or not list((tmp_path / "cache" / "masks").glob("*.pt"))
    for run in ("diffedit_1.0", "ito_full"):
        for edit in ("text_000000", "pose_000001"):
            record = json.loads((out / run / edit / "result.json").read_text())
            assert record["mask_source"] == "given" and "mask" not in record["unet_evaluations"]
            true = np.asarray(Image.open(tmp_path / "cache" / "s64" / edit / "true_mask.png")) > 127
            covered = F.adaptive_max_pool2d(torch.from_numpy(true).float()[None, None], (8, 8))[0, 0] > 0
            assert record["mask_area"] == pytest.approx(float(covered.float().mean()), abs=1e-3)


def test_toy_table1_runs_every_method(tmp_path, tiny_dirs):
    out = tmp_path / "table"
    sweep([str(EVAL / "toy_table1.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache"),
           "--", *SMALL])
    table = {row["run"]: row for row in read_csv(out / "sweep.csv")}
    assert list(table) == ["controlnet_sdedit", "diffedit_0.7", "diffedit_1.0", "ito_lam1", "ito_full", "ito_full_tu25",
                           "ito_lam1_tu25", "ito_lam1_tu25_keep", "prompt_to_prompt"]
    assert [table[r]["method"] for r in table] == (["SDEdit", "DiffEdit", "DiffEdit"] + ["EditModule"] * 5
                                                   + ["PromptToPrompt+NullTextInversion"])
    assert [table[r]["encode_ratio"] for r in table] == ["1.0000", "0.7000"] + ["1.0000"] * 7
    # lam is an ITO setting: empty for the baselines
    assert [table[r]["lam"] for r in table] == ["", "", "", "1.0000", "0.6000", "0.6000", "1.0000", "1.0000", ""]
    for name, row in table.items():
        assert (row["edits"], row["failed"]) == ("2", "0")
        summary = json.loads((out / name / "summary.json").read_text())
        assert float(row["gt/background_l1"]) == pytest.approx(summary["metrics"]["gt/background_l1"], abs=1e-4)
        edits = [r for r in read_csv(out / name / "results.csv") if r["id"] != "mean"]
        assert [r["id"] for r in edits] == ["text_000000", "pose_000001"]  # the held-out 'test' seeds 0, 1
        values = [float(r["gt/background_l1"]) for r in edits]
        assert all(0 < v < 1 for v in values)
        assert summary["metrics"]["gt/background_l1"] == pytest.approx(sum(values) / 2, abs=1e-4)
    record = lambda run, i="pose_000001": json.loads((out / run / i / "result.json").read_text())  # noqa: E731
    assert list(record("controlnet_sdedit")["unet_evaluations"]) == ["final"]
    assert record("diffedit_0.7")["encode_steps"] == 3 and record("diffedit_1.0")["encode_steps"] == 5  # of 5
    assert record("ito_lam1")["guidance_image"] is False and record("ito_full")["guidance_image"] is True
    # The runs share one mask per edit: the first run that needs it estimates it, the others read it.
    assert [record(run)["mask_source"] for run in table] == ["none", "estimated"] + ["cached"] * 6 + ["none"]
    assert len(list((tmp_path / "cache" / "masks").glob("*.pt"))) == 2
    # The W&B table of the run has a column per metric, filled per edit.
    tables = list((out / "ito_full" / "logs" / "wandb").glob("offline-run-*/files/media/table/edits/*.table.json"))
    assert len(tables) == 1
    wandb_table = json.loads(tables[0].read_text())
    column = wandb_table["columns"].index("gt/background_l1")
    assert [row[column] for row in wandb_table["data"]] == pytest.approx(
        [record("ito_full", i)["metrics"]["gt/background_l1"] for i in ("text_000000", "pose_000001")])
    assert wandb_table["columns"][-1] == "edit"


def test_inversions_sweep_changes_only_the_inversion(tmp_path, tiny_dirs):
    out = tmp_path / "inv"
    args = [str(EVAL / "inversions.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache", edits=1)]
    sweep([*args, "--check"])
    sweep([*args, "--only", "lam1_ddim", "--only", "lam1_null_text", "--", *SMALL])
    table = {row["run"]: row for row in read_csv(out / "sweep.csv")}
    assert [table[r]["method"] for r in table] == ["EditModule", "EditModule+NullTextInversion"]
    record = {r: json.loads((out / r / "text_000000" / "result.json").read_text()) for r in table}
    # null-text: the same trajectory (5 steps) plus, per step, the conditional half, 10 inner steps (no early stop
    # with random weights) and the step with the result
    assert record["lam1_ddim"]["unet_evaluations"]["inversion"] == 5
    assert record["lam1_null_text"]["unet_evaluations"]["inversion"] == 5 + 5 * (1 + 10 + 1)
    assert record["lam1_null_text"]["mask_source"] == "cached"  # the mask does not depend on the inversion


def test_imagenet_table1_scores_flexit_edits(tmp_path, tiny_dirs, imagenet, biased_classifier, tiny_clip):  # noqa: F811
    sets = {"model.backbone.pretrained": tiny_dirs["sd"], "data.queries": imagenet / "queries.csv",
            "data.root": imagenet / "val", "data.resolution": 64, "data.limit": 2,
            "model.metrics.1.features": "{class_path: tests.framework.test_metrics.MeanColour}",
            "model.metrics.2.classifier": biased_classifier, "model.metrics.3.model": tiny_clip / "model",
            "model.metrics.3.processor": tiny_clip / "processor", "model.mask.cache_dir": tmp_path / "masks"}
    args = [str(EVAL / "imagenet_table1.yaml"), "--output_dir", str(tmp_path / "in")]
    args += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    sweep([*args, "--check"])  # all five runs build
    sweep([*args, "--only", "diffedit_0.7", "--only", "ito_full", "--", *SMALL])
    table = {row["run"]: row for row in read_csv(tmp_path / "in" / "sweep.csv")}
    assert list(table) == ["diffedit_0.7", "ito_full"]
    for row in table.values():
        # Edits 00000_a (tench -> goldfish, id 1) and 00002_c (goldfish -> tench, id 0). The stand-in classifier's
        # logits are its bias (0, 5, 1, 3, 2): among the targets {0, 1} it always says 1.
        assert (float(row["classify/new_class"]), float(row["classify/original_class"])) == (0.5, 0.5)
        assert float(row["csfid/classes"]) == 2.0 and float(row["csfid/class_mean"]) >= 0
        assert float(row["edit/l1"]) > 0 and float(row["pick/count"]) == 2.0
    preference = [float(table[r]["pick/probability"]) for r in table]
    assert sum(preference) == pytest.approx(1.0, abs=2e-4) and all(0 < p < 1 for p in preference)
    first = json.loads((tmp_path / "in" / "ito_full" / "00000_a" / "result.json").read_text())
    assert (first["source_prompt"], first["edit_prompt"]) == ("a photo of a tench", "a photo of a goldfish")


def test_lam_sweep_with_auto(tmp_path, tiny_dirs):
    out = tmp_path / "lam"
    args = [str(EVAL / "lam_sweep.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache")]
    sweep([*args, "--check"])  # all seven runs build
    sweep([*args, "--only", "lam-0.6", "--only", "lam-auto", "--", *SMALL])
    rows = {row["run"]: row for row in read_csv(out / "sweep.csv")}
    assert list(rows) == ["lam-0.6", "lam-auto"] and rows["lam-auto"]["lam"] == "auto"
    rule = AutoLam()  # the sweep's auto_lam is the documented default
    for edit, text_edit in (("text_500000", True), ("pose_500001", False)):  # the 'val' seeds
        record = json.loads((out / "lam-auto" / edit / "result.json").read_text())
        assert record["lam_rule"]["prompt_changed"] is text_edit
        assert record["lam"] == pytest.approx(rule(record["lam_rule"]["mask_area"], text_edit))
        assert json.loads((out / "lam-0.6" / edit / "result.json").read_text())["lam"] == 0.6
    assert (out / "plots" / "gt_background_l1_vs_lam.png").is_file()
    assert not list((out / "plots").glob("*_vs_t_u.png"))


def test_tu_k_sweep(tmp_path, tiny_dirs):
    out = tmp_path / "tuk"
    args = [str(EVAL / "tu_k_sweep.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache")]
    sweep([*args, "--check"])  # all ten runs build (t_u up to 25 of the default 25 steps)
    sweep([*args, "--set", "model.sampling.steps=6", "--only", "update_steps-5_inner_steps-1",
           "--only", "update_steps-5_inner_steps-30", "--", "--model.mask.seeds", "2",
           "--model.guidance.update_steps", "3"])
    rows = read_csv(out / "sweep.csv")
    assert [(r["t_u"], r["k"]) for r in rows] == [("5", "1"), ("5", "30")]
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert "gt_background_l1_vs_k.png" in names and not any(n.endswith("_vs_t_u.png") for n in names)


def test_a_refused_rerun_keeps_the_folders_run_config_and_check_writes_nothing(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "table"
    args = [str(EVAL / "toy_table1.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache", 1),
            "--only", "controlnet_sdedit"]
    sweep([*args, "--", *SMALL])
    config = out / "controlnet_sdedit" / "run.yaml"
    before, edits = config.read_text(), sorted(p.name for p in (out / "controlnet_sdedit").iterdir())
    change = "model.sampling.guidance_scale=5.0"  # a setting that changes pixels (the toy edits carry their own
    sweep([*args, "--set", change, "--check"])  # seeds, so model.seed would change none and is not in the digest)
    assert config.read_text() == before and sorted(p.name for p in config.parent.iterdir()) == edits
    with pytest.raises(SystemExit):  # the folder's edit was made with CFG 7.5
        sweep([*args, "--set", change, "--", *SMALL])
    err = capsys.readouterr().err
    assert "other settings" in err and "run.failed.yaml" in err
    assert config.read_text() == before
    failed = yaml.safe_load((config.parent / "run.failed.yaml").read_text())["model"]["init_args"]
    assert failed["sampling"]["guidance_scale"] == 5.0


def test_toy_diagnosis_changes_one_choice_per_run(tmp_path, tiny_dirs):
    out = tmp_path / "diag"
    args = [str(EVAL / "toy_diagnosis.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache", 1)]
    sweep([*args, "--check"])  # all runs build
    sweep([*args, "--only", "ito_full", "--only", "guidance_in_edit_region_lam0.3", "--only", "ito_tau0.7",
           "--", *SMALL])
    config = lambda run: yaml.safe_load((out / run / "run.yaml").read_text())["model"]["init_args"]  # noqa: E731
    region = config("guidance_in_edit_region_lam0.3")
    assert region["lam"] == 0.3 and region["losses"][1]["init_args"]["region"] == "edit"
    assert config("ito_tau0.7")["mask"]["threshold"] == 0.7 and config("ito_full")["mask"]["threshold"] == 0.5
    record = lambda run: json.loads((out / run / "text_500000" / "result.json").read_text())  # noqa: E731
    assert [record(r)["mask_source"] for r in ("ito_full", "guidance_in_edit_region_lam0.3", "ito_tau0.7")] == [
        "estimated", "cached", "cached"]
    assert record("ito_tau0.7")["mask_area"] <= record("ito_full")["mask_area"]


def test_fronts_sweep_draws_one_line_per_method_with_bootstrap_intervals(tmp_path, tiny_dirs):
    out = tmp_path / "fronts"
    args = [str(EVAL / "fronts.yaml"), "--output_dir", str(out), *toy_sets(tiny_dirs, tmp_path / "cache", 3)]
    sweep([*args, "--check"])  # all runs build
    sweep([*args, "--only", "ito_lam0.2", "--only", "ito_lam1.0", "--only", "diffedit_0.7", "--only", "sdedit_0.7",
           "--only", "ito_auto", "--", *SMALL])
    table = (out / "fronts" / "fronts.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # lam: auto is a point of its own, at the mean of the lams its edits were given.
    auto_lams = [json.loads(r.read_text())["lam"] for r in (out / "ito_auto").glob("*/result.json")]
    assert len(auto_lams) == 3
    assert [(r[0].lstrip("| "), r[1], r[2]) for r in rows] == [
        ("DiffEdit", "encode_ratio", "0.7"), ("ITO t_u=3 blend +1", "lam", "0.2"), ("ITO t_u=3 blend +1", "lam", "1"),
        ("ITO t_u=3 blend +1 auto", "lam", f"{round(sum(auto_lams) / 3, 2):g}"), ("SDEdit", "encode_ratio", "0.7")]
    # Each cell: the mean over the 3 edits of the run's results.csv, inside its bootstrap interval.
    edits = [r for r in read_csv(out / "ito_lam0.2" / "results.csv") if r["id"] != "mean"]
    mean = sum(float(r["gt/background_l1"]) for r in edits) / len(edits)
    header = [h.strip() for h in table.splitlines()[2].strip("|").split("|")]
    cell = rows[1][header.index("gt/background_l1")].strip(" |")
    value, low, high = (float(v) for v in cell.replace("[", "").replace("]", "").replace(",", "").split())
    assert value == pytest.approx(mean, abs=1e-4) and low <= value <= high
    assert "guide/edit_l1" in edits[0] and not read_csv(out / "ito_lam1.0" / "results.csv")[0].get("guide/edit_l1")
    for png in ("gt_background_l1_vs_gt_target_l1.png", "gt_background_l1_vs_toy_new_class.png"):
        assert (out / "fronts" / png).stat().st_size > 1000


def test_a_front_point_is_named_by_its_method_t_u_and_gs_own_encode_ratio(tmp_path):
    from framework.evaluation.fronts import read_point

    def run(name, lam, encode_ratio=None, lams=(), ito=None, stages=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"parameters": {
            "method": "framework.lightning.module.EditModule", "lam": lam, "ito": {"update_steps": 15, **(ito or {})},
            "guidance": {"encode_ratio": encode_ratio}, "stages": stages or {}}}))
        (folder / "results.csv").write_text("id,gt/background_l1\na,0.03\nb,0.05\nmean,0.04\n")
        for n, value in enumerate(lams):
            (folder / f"e{n}").mkdir()
            (folder / f"e{n}" / "result.json").write_text(json.dumps({"lam": value}))
        return read_point(folder)

    plain, g07, auto = run("a", 0.6), run("b", 0.6, 0.7), run("c", "auto", lams=(0.6, 1.0, 0.3))
    assert (plain.method, plain.knob, plain.value) == ("ITO t_u=15", "lam", 0.6)
    assert plain.metrics == {"gt/background_l1": {"a": 0.03, "b": 0.05}}  # the mean row is not an edit
    assert g07.method == "ITO t_u=15 G 0.7"  # another line: G made from another noise level
    assert (auto.method, auto.value) == ("ITO t_u=15 auto", pytest.approx(0.63))
    blend = run("d", 0.6, ito={"blend": "after", "feather": 0.0, "lam_end": 1.0})
    assert blend.method == "ITO t_u=15 blend lam->1"  # the background levers name their own line
    p2p = run("e", 0.6, stages={"decoder": {"class": "framework.stages.prompt_to_prompt.PromptToPrompt", "cross_replace": 0.5},
                                "inversion": {"class": "framework.stages.inversions.DirectInversion"}})
    assert (p2p.method, p2p.knob, p2p.value) == ("prompt-to-prompt", "cross_replace", 0.5)


def test_piebench_scores_every_method(tmp_path, tiny_dirs, pie, tiny_dino, squeezenet, tiny_clip_folder):  # noqa: F811
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from framework.evaluation.metrics import with_frame

    sets = {"model.backbone.pretrained": tiny_dirs["sd"], "data.root": pie, "data.resolution": 64, "data.limit": 2,
            "data.mask_dir": tmp_path / "pie-masks", "model.mask.cache_dir": tmp_path / "masks",
            "model.metrics.0.dino": tiny_dino, "model.metrics.0.size": 32,
            "model.metrics.2.backbone": squeezenet / "squeezenet1_1.safetensors",
            "model.metrics.3.model": tiny_clip_folder}
    out = tmp_path / "pie-out"
    args = [str(EVAL / "piebench.yaml"), "--output_dir", str(out)]
    args += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    sweep([*args, "--check"])  # all six runs build
    sweep([*args, "--only", "diffedit_0.7", "--only", "ito_full", "--only", "ito_full_pie_mask", "--", *SMALL])
    table = {row["run"]: row for row in read_csv(out / "sweep.csv")}
    assert list(table) == ["diffedit_0.7", "ito_full", "ito_full_pie_mask"]
    keys = ["structure/distance", "background/psnr", "background/mse", "background/ssim", "background/lpips",
            "clip/whole", "clip/edited"]
    for name, row in table.items():
        assert (row["edits"], row["failed"]) == ("2", "0")
        summary = json.loads((out / name / "summary.json").read_text())["metrics"]
        for key in keys:
            assert float(row[key]) == pytest.approx(summary[key], abs=1e-4)
        assert summary["structure/distance"] > 0 and 0 < summary["background/mse"] < 1
    record = lambda run, i="111000000000": json.loads((out / run / i / "result.json").read_text())  # noqa: E731
    assert (record("ito_full")["source_prompt"], record("ito_full")["edit_prompt"]) == (
        "a cat sitting on a bench", "a dog sitting on a bench")
    assert [record(run)["mask_source"] for run in table] == ["estimated", "cached", "given"]
    # The given mask is the annotation (rows 30..49, columns 36..51 of 64), brought to the 8 x 8 latent grid.
    truth = torch.zeros(1, 1, 64, 64)
    truth[..., 30:50, 36:52] = 1
    assert record("ito_full_pie_mask")["mask_area"] == pytest.approx(
        float((F.adaptive_max_pool2d(truth, (8, 8)) > 0).float().mean()), abs=1e-3)
    # The run scored outside the annotated region (and the frame): recomputed from the written 8-bit images.
    folder = out / "ito_full" / "111000000000"
    read = lambda name: torch.from_numpy(np.asarray(Image.open(folder / name), np.float32) / 255)  # noqa: E731
    keep = 1 - with_frame(truth)[0, 0]
    mse = float((((read("edit.png") - read("input.png")) * keep[..., None]) ** 2).mean())
    assert record("ito_full")["metrics"]["background/mse"] == pytest.approx(mse, rel=0.02, abs=1e-5)
