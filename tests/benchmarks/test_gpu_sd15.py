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


def test_the_flow_cases_run_the_whole_edit_per_stage_on_the_cpu(tmp_path):
    """SD3 (CFG: two samples per step) and FLUX.1-dev (guidance-distilled: one) through EditPipeline, tiny, 64 px."""
    import json

    import pytest

    from benchmarks.gpu_sd15 import main

    steps = 6
    for model, per_step in (("sd3", 2), ("flux", 1)):
        results = main(["--model", model, "--device", "cpu", "--size", "64", "--tiny", "--repeats", "0", "--steps",
                        str(steps), "--quiet", "--json", str(tmp_path / f"{model}.json")])
        edit = results["precisions"]["fp32"]["whole_edit"]
        assert results["config"]["model"] == model and results["precisions"]["fp32"]["finite"]
        assert list(edit) == ["encode", "inversion", "mask", "guidance", "final", "decode", "total"]
        assert (edit["inversion"]["unet"], edit["final"]["unet"]) == (steps, per_step * steps)
        assert edit["guidance"]["unet"] > 0  # lam 0.6 makes the guidance image
        if model == "sd3":  # the ControlNet at every evaluation; FLUX's stops at 65 % of the steps (flux_pose.yaml)
            assert edit["total"]["unet"] == edit["total"]["cn"]
        else:
            assert 0 < edit["total"]["cn"] < edit["total"]["unet"]
        assert json.loads((tmp_path / f"{model}.json").read_text())["config"]["steps"] == steps
    assert results["config"]["guidance_scale"] == pytest.approx(1.0)


def test_the_flow_cases_real_sizes_count_on_the_meta_device():
    """The real-size modules built on the meta device (nothing allocated): the published parameter counts."""
    from benchmarks.gpu_sd15 import main

    sd3 = main(["--model", "sd3", "--device", "meta", "--params-only", "--quiet"])["config"]
    flux = main(["--model", "flux", "--device", "meta", "--params-only", "--quiet"])["config"]
    assert sd3["dtypes"] == flux["dtypes"] == ["bf16"]
    assert round(sd3["params_m"]["transformer"]) == 2028  # SD3 medium: 2B
    assert round(flux["params_m"]["transformer"]) == 11901  # FLUX.1-dev: 12B
    assert round(sd3["params_m"]["text_encoder_3"]) == round(flux["params_m"]["text_encoder_2"]) == 4762  # T5-XXL
    assert 15 < sd3["weights_gib"] < 16 and 35 < flux["weights_gib"] < 36  # bf16: 2 bytes a parameter
