"""The monitoring benchmark runs end to end on tiny sizes (20 series, two versions, in
process and over HTTP) and its figures add up; no timing is asserted (shared/BENCHMARKS.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.__main__ import parse_args
from bench.monitoring import HORIZON, format_monitoring, run_monitoring_benchmark

SERIES = 20
VERSIONS = 2


def test_monitoring_benchmark_reports_ingest_query_growth_and_baselines(tmp_path: Path) -> None:
    results = run_monitoring_benchmark(tmp_path, series=SERIES, length=36, versions=VERSIONS, repeats=1, http=True)
    rows = SERIES * HORIZON
    assert results["actual_rows"] == rows and results["csv_bytes"] > 0
    timed = ("ingest_cold", "ingest_warm", "report", "pandas_parse", "sktime_mase", "our_metrics")
    assert set(results["seconds"]) == {*timed, "post_actuals", "get_monitoring"}
    for summary in results["seconds"].values():
        assert summary["repeats"] == 1 and summary["median"] > 0
    for name, summary in results["rows_per_second"].items():
        assert math.isclose(summary["median"], rows / results["seconds"][name]["median"])
    assert len(results["ratios"]) == 6
    assert all(r["median"] > 0 for r in results["ratios"].values())

    record = results["record"]
    assert [v["version"] for v in record["versions"]] == [1, 2]
    sizes = [v["record_bytes"] for v in record["versions"]]
    assert 0 < sizes[0] < sizes[1]  # each version adds its forecast to the record
    assert record["bytes_added_per_version"]["values"] == [sizes[0], sizes[1] - sizes[0]]
    assert math.isclose(record["bytes_per_version_per_1000_series"], record["bytes_added_per_version"]["median"] * 50)
    assert all(v["version_record_bytes"] > 0 and v["registry_forecast_bytes"] > 0 for v in record["versions"])

    checks = results["checks"]
    assert checks["mase_series_compared"] == SERIES and checks["mase_max_abs_difference"] <= 1e-9
    assert checks["actuals_bytes"] > 0 and checks["record_bytes_after_ingest"] > sizes[-1]
    assert "record bytes added per version" in format_monitoring(results)
    json.dumps(results, allow_nan=False)  # plain data, written to results.json


def test_make_bench_can_run_the_monitoring_benchmark_alone() -> None:
    assert parse_args(["--only", "monitoring"]).only == "monitoring"
