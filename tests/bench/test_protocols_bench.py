"""The protocol-overhead benchmark runs end to end on a few requests and its figures add up;
no timing is asserted (shared/BENCHMARKS.md)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.protocols import format_protocols, requests_to_time, run_protocols_benchmark


def test_protocols_benchmark_times_each_route_and_checks_the_numbers_agree(
    tmp_path: Path, trained_registry_path: Path
) -> None:
    results = run_protocols_benchmark(tmp_path, requests=3, repeats=1, trained=trained_registry_path)
    assert set(results["p50_ms"]) == set(requests_to_time()) == set(results["p90_ms"])
    for name, summary in results["p50_ms"].items():
        assert summary["repeats"] == 1 and 0 < summary["median"] <= results["p90_ms"][name]["median"]
    kserve = results["ratios"]["kserve / predict (p50)"]["median"]
    assert math.isclose(kserve, results["p50_ms"]["kserve"]["median"] / results["p50_ms"]["predict"]["median"])
    assert all(v == 0.0 for v in results["checks"].values())  # the same numbers by every route
    assert "kserve / predict (p50)" in format_protocols(results)
