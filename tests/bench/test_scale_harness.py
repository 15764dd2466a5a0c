"""The panel-scale benchmark runs end to end on tiny sizes and its figures add up (no timing asserted)."""

from __future__ import annotations

import pickle
from pathlib import Path

from bench.scale import STAGES, format_scale, run_scale_benchmark


def test_scale_benchmark_reports_per_series_constants_plot_and_paper(tmp_path: Path) -> None:
    plot = tmp_path / "scale.png"
    results = run_scale_benchmark([4, 8], length=36, plot=plot)
    assert [s["series"] for s in results["sizes"]] == [4, 8]
    for size in results["sizes"]:
        assert set(STAGES) <= set(size["seconds"])
        for stage in STAGES:  # seconds are rounded to 0.1 ms in the results
            expected = 1000 * size["seconds"][stage] / size["series"]
            assert abs(size["per_series_ms"][stage] - expected) <= 0.1 / size["series"] + 1e-3
        assert size["artifact_bytes"] > 0 and size["resident_bytes"] >= 0
    # a bigger panel pickles bigger: the artifact is the whole panel
    assert results["sizes"][1]["artifact_bytes"] > results["sizes"][0]["artifact_bytes"]
    paper = results["paper"]
    assert paper["series"] == 1_000_000 and paper["from_size"] == 8
    on_one, on_eight = paper["publish_seconds_on_workers"]["1"], paper["publish_seconds_on_workers"]["8"]
    assert abs(on_one / 8 - on_eight) <= 0.1 + 1e-6 * on_one
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1M series on paper" in format_scale(results)
    pickle.dumps(results)  # plain data, written to results.json
