"""The sweep runner's parts without models: overrides, run configs, collecting scores, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from framework.core.errors import ConfigError
from framework.evaluation.sweep import Run, collect, grid_runs, read_sweep, run_config, set_dotted


def test_dotted_keys_reach_init_args_and_list_items():
    config = {"model": {"class_path": "framework.EditModule", "init_args": {
        "backbone": {"class_path": "framework.StableDiffusion", "init_args": {"pretrained": "a"}},
        "conditioners": [{"class_path": "conditioners.ControlNetConditioner", "init_args": {"modality": "pose"}}]}},
        "trainer": {}}
    set_dotted(config, "model.lam", "auto")
    set_dotted(config, "model.sampling.encode_ratio", 0.7)
    set_dotted(config, "model.backbone.pretrained", "b")
    set_dotted(config, "model.conditioners.0.scale", 0.5)
    set_dotted(config, "model.class_path", "framework.lightning.baselines.DiffEdit")
    set_dotted(config, "trainer.precision", "bf16-mixed")
    args = config["model"]["init_args"]
    assert config["model"]["class_path"] == "framework.lightning.baselines.DiffEdit" and args["lam"] == "auto"
    assert args["sampling"] == {"encode_ratio": 0.7} and args["backbone"]["init_args"]["pretrained"] == "b"
    assert args["conditioners"][0]["init_args"] == {"modality": "pose", "scale": 0.5}
    assert config["trainer"] == {"precision": "bf16-mixed"}
    with pytest.raises(ConfigError, match="'3' is not an index of a 1-item list"):
        set_dotted(config, "model.conditioners.3.scale", 1.0)
    with pytest.raises(ConfigError, match="'model.lam' is a value"):
        set_dotted(config, "model.lam.low", 0.1)


def test_grid_runs_are_every_combination():
    runs = grid_runs({"model.ito.update_steps": [5, 15], "model.ito.inner_steps": [1, 30]})
    assert [r.name for r in runs] == ["update_steps-5_inner_steps-1", "update_steps-5_inner_steps-30",
                                      "update_steps-15_inner_steps-1", "update_steps-15_inner_steps-30"]
    assert runs[1].overrides == {"model.ito.update_steps": 5, "model.ito.inner_steps": 30}
    with pytest.raises(ConfigError, match="non-empty list"):
        grid_runs({"model.lam": 0.5})


def test_run_config_precedence_and_outputs(tmp_path):
    base = {"model": {"class_path": "framework.EditModule", "init_args": {"lam": 0.6}},
            "trainer": {"logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                   "init_args": {"project": "p"}}}}
    run = Run("ito_lam1", {"model.lam": 1.0})
    config = run_config(base, run, {"model.lam": 0.3, "model.seed": 4}, tmp_path / "ito_lam1", "table")
    args = config["model"]["init_args"]
    assert (args["lam"], args["seed"], args["output_dir"]) == (1.0, 4, str(tmp_path / "ito_lam1"))
    assert config["trainer"]["logger"]["init_args"] == {"project": "p", "save_dir": str(tmp_path / "ito_lam1" / "logs"),
                                                        "name": "table/ito_lam1", "group": "table"}
    assert base["model"]["init_args"] == {"lam": 0.6}  # the base is not changed
    plain = run_config({"model": {"init_args": {}}}, run, {}, tmp_path / "r", "t")
    assert plain["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"


def test_read_sweep_checks_the_section(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": {}, "sweep": {"runs": [{"name": "a", "set": {"model.lam": 1.0}}],
                                                           "grid": {"model.lam": [0.2, "auto"]}}}))
    sweep, base, runs = read_sweep(path)
    assert [r.name for r in runs] == ["a", "lam-0.2", "lam-auto"] and base == {"model": {}}
    for bad, message in [({"model": {}}, "no `sweep:` section"), ({"sweep": {"runs": [{"name": "a"}, {"name": "a"}]}},
                                                                  "unique names"),
                         ({"sweep": {"grid": {"model.lam": [1]}, "command": "train"}}, "sweep.command"),
                         ({"sweep": {"grids": {}}}, r"unknown sweep key\(s\) \['grids'\]")]:
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message):
            read_sweep(path)


def fake_run(folder, method, lam, scores, ito=True, picks=None):
    folder.mkdir(parents=True)
    params = {"method": f"framework.{method}", "stages": {"ito": ito}, "lam": lam, "sampling": {"encode_ratio": 1.0},
              "ito": {"update_steps": 15, "inner_steps": 1}}
    (folder / "summary.json").write_text(json.dumps({"parameters": params, "totals": {"edits": 2, "failed": 0},
                                                     "metrics": scores}))
    if picks is not None:
        (folder / "results.csv").write_text("id,method,lam,pick/score\n" + "".join(
            f"e{n},m,{lam},{p}\n" for n, p in enumerate(picks)) + "mean,,,0\n")


def test_collect_tables_runs_and_pick_preference(tmp_path):
    fake_run(tmp_path / "diffedit", "baselines.DiffEdit", 0.6, {"edit/l1": 0.1, "pick/score": 20.0}, ito=False,
             picks=[21.0, 19.0])
    fake_run(tmp_path / "ito", "module.EditModule", 0.6, {"edit/l1": 0.2, "pick/score": 20.5}, picks=[22.0, 19.0])
    rows = collect(tmp_path, ["diffedit", "ito", "missing"])
    assert [r["run"] for r in rows] == ["diffedit", "ito"]
    assert rows[0]["lam"] is None and rows[0]["t_u"] is None and rows[1]["lam"] == 0.6  # no ITO: no lam
    # Per edit, softmax over the runs of their PickScores, averaged: edit 0: e / (1 + e) for ito; edit 1: 1/2.
    import math

    expected = (math.e / (1 + math.e) + 0.5) / 2
    assert rows[1]["pick/probability"] == pytest.approx(expected) and rows[0]["pick/probability"] == pytest.approx(
        1 - expected)
    csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv_lines[0] == "run,method,lam,encode_ratio,t_u,k,edits,failed,edit/l1,pick/probability,pick/score"
    assert csv_lines[1].startswith("diffedit,DiffEdit,,1.0000,,,2,0,0.1000,")
    md = (tmp_path / "sweep.md").read_text()
    assert "| | diffedit | ito |" in md and "| edit/l1 | 0.1000 | 0.2000 |" in md and "missing" in md


def test_plain_cli_points_a_sweep_file_to_the_runner(capsys):
    from framework.lightning.cli import main
    from tests.conftest import ROOT

    with pytest.raises(SystemExit) as stop:
        main(["test", "--config", str(ROOT / "experiments" / "eval" / "lam_sweep.yaml")])
    assert stop.value.code == 2
    assert "python -m framework.evaluation.sweep <file>" in capsys.readouterr().err


def test_collect_publishes_the_table_for_the_docs(tmp_path):
    """`--collect --publish PAGE` writes the sweep's own table into a page that names how to regenerate it."""
    from framework.evaluation.sweep import main

    out = tmp_path / "runs"
    fake_run(out / "a", "module.EditModule", 0.6, {"gt/background_l1": 0.04})
    fake_run(out / "b", "module.EditModule", 1.0, {"gt/background_l1": 0.03})
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "model": {"init_args": {"backbone": {"init_args": {"pretrained": "builtin:toyworld"}}}},
        "data": {"class_path": "framework.toy.datasets.ToyEditDataModule", "init_args": {"edits": 2, "split": "val"}},
        "sweep": {"output_dir": str(out), "runs": [{"name": "a", "set": {}}, {"name": "b", "set": {}}]}}))
    page = tmp_path / "docs" / "results" / "s.md"
    main([str(sweep), "--collect", "--publish", str(page)])
    text = page.read_text()
    assert (out / "sweep.md").read_text().strip() in text
    assert f"python -m framework.evaluation.sweep {sweep} --collect --publish {page}" in text
    assert "| gt/background_l1 | 0.0400 | 0.0300 |" in text and "builtin:toyworld" in text and "split: val" in text
