"""The README's "Your own data" walkthrough, run as written (bash, the real CLI in remote
mode) against a real server: CSV -> dataset with an inferred frequency -> spec that takes
its roles from it -> retrain -> forecasts equal to sktime's on the same data -> a forecast
from a new actual."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sktime.datasets import load_shampoo_sales
from sktime.forecasting.ets import AutoETS

from tests.conftest import REPO

from .conftest import ServerFactory

pytestmark = pytest.mark.slow


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"### Your own data.*?```sh\n(.*?)```", text, re.S)
    assert found, "README has no 'Your own data' walkthrough"
    return found.group(1)


def test_the_walkthrough_runs_as_written(tmp_path: Path, start_server: ServerFactory) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    server = start_server(registry, data_dir=tmp_path / "data")
    server.wait_ready()
    script = walkthrough().replace("http://127.0.0.1:8000", server.base_url)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if k not in ("FORECAST_REGISTRY", "FORECAST_DATA_DIR")}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout

    assert "shampoo: version " in out and "36 rows" in out
    assert "checked, not written (dry run)" in out and "shampoo: spec stored" in out

    # the forecast CSV: 6 months from January 1994, equal to sktime's AutoETS on the same data
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("month,sales"))
    rows = [line.split(",") for line in lines[header + 1 : header + 7]]
    assert [r[0] for r in rows] == [f"1994-{m:02d}-01" for m in range(1, 7)]
    y = load_shampoo_sales()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = AutoETS(trend="add").fit(y, fh=list(range(1, 7)))
        point = expected.predict()
        interval = expected.predict_interval(coverage=0.8)
    np.testing.assert_allclose([float(r[1]) for r in rows], point.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose([float(r[2]) for r in rows], interval.iloc[:, 0].to_numpy(), rtol=1e-7)

    # the forecast from January's actual starts in February, and says how it took the actual
    start = out.index("{", out.index("sales_upper_80", out.index("month,sales")))
    doc, _ = json.JSONDecoder().raw_decode(out[start:])
    assert doc["cutoff"] == "1994-01-01" and doc["forecast"]["month"][0] == "1994-02-01"
    assert doc["observations_mode"] in ("state", "refit")
    assert "shampoo" in out.splitlines()[-1] or any(line.startswith("shampoo ") for line in lines)
