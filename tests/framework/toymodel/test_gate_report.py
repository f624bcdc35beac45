"""framework.toy.model.gate_report (`python -m framework gates`): the two-object rows pass and fail at their levels."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def script():
    from framework.toy.model import gate_report

    return gate_report


@pytest.mark.parametrize("named, kept, passed", [(0.5, 0.8, [True, True]), (0.46, 0.95, [False, True]),
                                                 (0.9, 0.5, [True, False])])
def test_two_object_rows(script, named, kept, passed):
    rows = script.gates({"two_object_named": named, "two_object_others_kept": kept, "two_object_bound": 0.4,
                         "two_object_n": 24})
    assert [ok for *_, ok in rows] == passed
    assert rows[0][1] == pytest.approx(100 * named) and rows[1][1] == pytest.approx(100 * kept)
    se = 100 * (named * (1 - named) / 24) ** 0.5  # the binomial standard error on 24 edits
    assert f"+-{se:.1f}" in rows[0][0]
