"""benchmarks/ measures the product as it ships: no `sys.path` edits, and every setting read from the settings."""

from __future__ import annotations

import ast

from framework.core.settings import GuidanceConfig, ITOConfig, MaskConfig, SamplingConfig, paper_literal_mask, step_count
from tests.conftest import ROOT

BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_no_script_edits_sys_path():
    assert len(BENCHMARKS) >= 6  # common, edit_speed, gpu_sd15, large_image, inversions, cpu_threads (+ __init__)
    for path in BENCHMARKS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path.name}:{node.lineno} edits sys.path; run it as `python -m benchmarks.NAME`")


def test_common_restates_no_default():
    from benchmarks import common

    sampling, ito = SamplingConfig(), ITOConfig()
    assert (common.STEPS, common.CFG, common.INVERSION_CFG) == (sampling.steps, sampling.guidance_scale,
                                                                sampling.inversion_guidance_scale)
    assert (common.T_U, common.K) == (step_count(ito.update_steps, sampling.steps), ito.inner_steps) == (12, 2)
    assert (common.MASK_SEEDS, common.MASK_STRENGTH) == (paper_literal_mask().seeds, MaskConfig().strength)
    assert common.GUIDANCE == GuidanceConfig()
    # The only number written in common.py at module level is lam 0.6, chosen (not the default 1) so that the
    # guidance image is made and timed.
    literals = [target.id for node in ast.parse((ROOT / "benchmarks" / "common.py").read_text()).body
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, (int, float)) for target in node.targets]
    assert literals == ["LAM"]
