"""benchmarks/gpu_sd15.py's SDXL case, dry-run on the CPU with the tiny SDXL model."""

from __future__ import annotations


def test_the_sdxl_case_runs_the_whole_edit_per_stage_on_the_cpu(tmp_path):
    import json

    from benchmarks.gpu_sd15 import main
    from framework.core.settings import SamplingConfig

    results = main(["--model", "sdxl", "--device", "cpu", "--size", "64", "--tiny", "--repeats", "0", "--quiet",
                    "--json", str(tmp_path / "sdxl.json")])
    edit = results["precisions"]["fp32"]["whole_edit"]
    assert results["config"]["model"] == "sdxl" and results["precisions"]["fp32"]["finite"]
    # the default 20 steps: 20 inversion evaluations; the final decode's 20 CFG pairs; the ControlNet at each
    steps = SamplingConfig().steps
    assert (edit["inversion"]["unet"], edit["final"]["unet"]) == (steps, 2 * steps)
    assert edit["total"]["unet"] == edit["total"]["cn"] > 100
    assert set(results["config"]["params_m"]) == {"unet", "controlnet", "vae", "text_encoder", "text_encoder_2"}
    assert json.loads((tmp_path / "sdxl.json").read_text())["config"]["size"] == 64
