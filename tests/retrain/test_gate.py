"""The promotion gate: lower is better for every gate metric, 'at least as good' within
a relative tolerance; always/never override the comparison."""

from __future__ import annotations

import math

import pytest

from service.errors import InvalidInput
from service.jobs.retrain import RetrainParams, check_gate_metric, decide


@pytest.mark.parametrize(
    ("candidate", "production"),
    [(0.5, 1.0), (9.0, 1.0), (None, 1.0), (1.0, None), (None, None), (math.nan, 1.0)],
)
def test_always_promotes_and_never_does_not(candidate: float | None, production: float | None) -> None:
    assert decide("always", candidate, production, 0.0) == (True, "promote=always")
    promoted, reason = decide("never", candidate, production, 0.0)
    assert promoted is False and "promote=never" in reason


def test_auto_without_production_promotes() -> None:
    assert decide("auto", 3.0, None, 0.0) == (True, "no production version to compare with")
    assert decide("auto", None, None, 0.0)[0] is True


def test_auto_without_a_candidate_score_does_not_promote() -> None:
    promoted, reason = decide("auto", None, 1.0, 0.5)
    assert promoted is False and "could not be computed" in reason


@pytest.mark.parametrize(
    ("candidate", "production", "tolerance", "promoted"),
    [
        (0.9, 1.0, 0.0, True),  # better
        (1.0, 1.0, 0.0, True),  # as good
        (1.0 + 1e-9, 1.0, 0.0, False),  # worse by a hair, no slack
        (1.049, 1.0, 0.05, True),  # worse, within 5 %
        (1.05, 1.0, 0.05, True),  # on the bound
        (1.051, 1.0, 0.05, False),  # beyond the bound
        (0.0, 0.0, 0.0, True),  # both perfect
        (1e-12, 0.0, 0.5, False),  # relative slack of a perfect production is zero
        (2.9, 1.0, 2.0, True),  # tolerance over 100 %
        (math.inf, 1.0, 10.0, False),
        (math.nan, 1.0, 0.0, False),  # a NaN score never wins
        (-1.05, -1.0, 0.1, True),  # negative scores: the bound widens towards zero
        (-0.85, -1.0, 0.1, False),
    ],
)
def test_auto_compares_within_the_tolerance(
    candidate: float, production: float, tolerance: float, promoted: bool
) -> None:
    decision, reason = decide("auto", candidate, production, tolerance)
    assert decision is promoted
    if promoted:
        assert "<=" in reason
    else:
        assert "worse than production" in reason
    assert f"tolerance {tolerance:g}" in reason


def test_reason_names_both_scores() -> None:
    _, reason = decide("auto", 2.5, 2.0, 0.1)
    assert "2.5" in reason and "2" in reason and "0.1" in reason


def test_retrain_params_from_a_body() -> None:
    assert RetrainParams.from_dict({}) == RetrainParams()
    params = RetrainParams.from_dict(
        {"dataset_version": "abc", "promote": "never", "gate": {"metric": "MAE", "tolerance": 0.2, "folds": 3}}
    )
    assert params == RetrainParams("abc", "never", "MAE", 0.2, 3)
    # a schedule's body carries a trigger and a slot, and no gate
    assert RetrainParams.from_dict({"trigger": "schedule", "slot": "2024-01-01T00:00:00+00:00"}) == RetrainParams()


@pytest.mark.parametrize("metric", ["MAE", "RMSE", "MAPE", "sMAPE", "MASE", "WAPE"])
def test_gate_metrics(metric: str) -> None:
    assert check_gate_metric(metric) == metric


@pytest.mark.parametrize("metric", ["FOO", "mase", "pinball", "coverage", ""])
def test_unknown_gate_metric(metric: str) -> None:
    with pytest.raises(InvalidInput, match="gate metric"):
        check_gate_metric(metric)
