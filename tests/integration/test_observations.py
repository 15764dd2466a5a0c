"""Honest `observations` on a real server (issue "A user's first day", item 1).

sktime 1.2's ``update(update_params=False)`` only moves the cutoff of Theta, Holt-Winters
(the reconciled hierarchy) and VAR: a forecast with new actuals sent as 1.0 or as 10000.0
was the same, with a 200. Each version now records at publish how it takes new actuals
(``state``, ``refit`` or ``none``); every demo model's forecast moves with a perturbed
observation and equals sktime's own update in that mode, or the request is refused.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from service.forecasting.predict import private_copy
from service.forecasting.sktime_internals import remembered_x, remembered_y
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from service.tables import TOTAL

from .conftest import ServerFactory, ServerProcess, copy_models, running_server

pytestmark = pytest.mark.slow

DEMOS = {  # model: the mode its probe must find
    "airline": "refit",
    "macro-var": "refit",
    "sales-hierarchy": "refit",
    "tourism-monthly": "state",
    "uschange": "state",
}
SPECS = Path(__file__).resolve().parents[2] / "models"


def _spec(model: str, **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(yaml.safe_load((SPECS / model / "model.yaml").read_text())), **changes}


@pytest.fixture(scope="module")
def registry_path(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demos, and two variants whose spec chooses the mode (trained here)."""
    root = copy_models(trained_registry_path, tmp_path_factory.mktemp("observations") / "models", list(DEMOS))
    registry = Registry(root)
    for name, base, mode in (("airline-none", "airline", "none"), ("uschange-refit", "uschange", "refit")):
        registry.write_spec_document(name, _spec(base, observations=mode))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_and_publish(registry, name)
    return root


@pytest.fixture(scope="module")
def server(registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_server(registry_path, tmp_path_factory.mktemp("observations-log") / "server.log")


def _wire_time(value: Any) -> Any:
    return value.start_time.strftime("%Y-%m-%d") if isinstance(value, pd.Period) else int(value)


def _next_actuals(forecaster: Any, factor: float) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The next period of every bottom series: its last value moved by ``factor`` of the data's
    spread, with the last exogenous row repeated; sktime's layout (time in the index)."""
    y = remembered_y(forecaster)
    x = remembered_x(forecaster)
    assert y is not None
    if isinstance(y.index, pd.MultiIndex):
        leaves = ~y.index.droplevel(-1).to_frame().eq(TOTAL).any(axis=1).to_numpy()
        last = y[leaves].groupby(level=list(range(y.index.nlevels - 1))).tail(1)
        index = pd.MultiIndex.from_tuples([(*t[:-1], t[-1] + 1) for t in last.index], names=y.index.names)
    else:
        last = y.iloc[-1:]
        index = pd.Index([y.index[-1] + 1], name=y.index.name)
    frame = last.to_frame() if isinstance(last, pd.Series) else last.copy()
    spread = float(np.nanstd(np.asarray(y, dtype=float)))
    frame = frame + factor * spread
    frame.index = index
    x_new = None
    if x is not None:
        x_new = pd.DataFrame([x.iloc[-1].to_numpy()], index=index, columns=x.columns)
    return frame, x_new


def _wire(y_new: pd.DataFrame, x_new: pd.DataFrame | None, names: list[str], targets: list[str]) -> dict[str, Any]:
    table = y_new.copy()
    table.columns = targets
    if x_new is not None:
        table = table.join(x_new)
    table = table.reset_index()
    table.columns = [*names, *table.columns[len(names) :]]
    wire: dict[str, Any] = {}
    for column in table.columns:
        values = table[column].tolist()
        wire[column] = [_wire_time(v) for v in values] if column == names[-1] else values
    return wire


def _future_exogenous(x_new: pd.DataFrame, time: str, steps: int) -> dict[str, Any]:
    last = x_new.index[-1]
    rows = {time: [int(last) + s for s in range(1, steps + 1)]}
    for column in x_new.columns:
        rows[column] = [float(x_new[column].iloc[-1])] * steps
    return rows


def _expected(forecaster: Any, y_new: pd.DataFrame, x_new: pd.DataFrame | None, mode: str, steps: int) -> np.ndarray:
    """sktime's own update in that mode, on a private copy, then its point forecast."""
    private = private_copy(forecaster)
    remembered = remembered_y(forecaster)
    y = y_new.iloc[:, 0].rename(remembered.name) if isinstance(remembered, pd.Series) else y_new
    x_future = None
    if x_new is not None:
        index = pd.Index([int(x_new.index[-1]) + s for s in range(1, steps + 1)])
        x_future = pd.DataFrame([x_new.iloc[-1].to_numpy()] * steps, index=index, columns=x_new.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(y.index, pd.MultiIndex) and TOTAL in str(remembered.index.tolist()):
            from sktime.transformations.hierarchical.aggregate import Aggregator

            y = Aggregator(flatten_single_levels=False).fit_transform(y)
        private.update(y, X=x_new, update_params=mode == "refit")
        return np.asarray(private.predict(fh=list(range(1, steps + 1)), X=x_future), dtype=float)


def _ask(http: httpx.Client, name: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v1/models/{name}/predict", json=body)


@pytest.mark.parametrize("name", list(DEMOS))
def test_every_demo_model_moves_with_new_actuals(server: ServerProcess, registry_path: Path, name: str) -> None:
    """A low and a high next actual give different forecasts, each equal to sktime's update in
    the version's recorded mode; the mode is in the manifest, the body and a header."""
    loaded = Registry(registry_path).load(name, 1)
    manifest = loaded.manifest
    schema = manifest["schema"]
    names = [*schema["keys"], schema["time"]]
    assert manifest["observations"]["mode"] == DEMOS[name], manifest["observations"]
    steps = 3
    forecasts = []
    with server.client() as http:
        for factor in (-0.5, 0.5):
            y_new, x_new = _next_actuals(loaded.forecaster, factor)
            body: dict[str, Any] = {"observations": _wire(y_new, x_new, names, schema["targets"]), "horizon": steps}
            if x_new is not None:
                body["exogenous"] = _future_exogenous(x_new, schema["time"], steps)
            response = _ask(http, name, body)
            assert response.status_code == 200, response.text
            payload = response.json()
            assert payload["observations_mode"] == response.headers["x-observations-mode"] == DEMOS[name]
            served = np.column_stack([payload["forecast"][t] for t in schema["targets"]])
            expected = _expected(loaded.forecaster, y_new, x_new, DEMOS[name], steps)
            if name == "sales-hierarchy":  # compare the same rows: sort both by node and time
                table = pd.DataFrame(payload["forecast"])
                served = table.sort_values([*schema["keys"], schema["time"]])[schema["targets"]].to_numpy()
                expected = np.sort(expected.ravel())
                served = np.sort(served.ravel())
            np.testing.assert_allclose(served.ravel(), expected.ravel(), rtol=1e-7, atol=1e-9, err_msg=name)
            forecasts.append(served)
    assert not np.allclose(forecasts[0], forecasts[1]), f"{name}: the forecast ignored the new actuals"


def test_spec_none_refuses_observations(server: ServerProcess, registry_path: Path) -> None:
    """`observations: none` in the spec: a 422 naming the capability; plain forecasts still work."""
    manifest = Registry(registry_path).read_manifest("airline-none", 1)
    assert manifest["observations"]["mode"] == "none"
    assert manifest["observations"]["chosen_by"] == "spec"
    with server.client() as http:
        refused = _ask(http, "airline-none", {"observations": {"month": ["1961-01-01"], "passengers": [400.0]}})
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "observations" in problem["detail"] and "does not take new actuals" in problem["detail"]
        assert problem.get("capability") == "observations"
        assert _ask(http, "airline-none", {"horizon": 3}).status_code == 200


def test_spec_refit_on_a_model_that_could_take_state(server: ServerProcess, registry_path: Path) -> None:
    """`observations: refit` for SARIMAX: refitted (parameters move), equal to sktime's
    ``update(update_params=True)`` and different from the state answer of the demo."""
    loaded = Registry(registry_path).load("uschange-refit", 1)
    assert loaded.manifest["observations"] | {"probe": None} == {
        "mode": "refit",
        "chosen_by": "spec",
        "reason": loaded.manifest["observations"]["reason"],
        "probe": None,
    }
    y_new, x_new = _next_actuals(loaded.forecaster, 2.0)
    assert x_new is not None
    body = {
        "observations": _wire(y_new, x_new, ["quarter"], ["consumption"]),
        "exogenous": _future_exogenous(x_new, "quarter", 2),
        "horizon": 2,
    }
    with server.client() as http:
        refit = _ask(http, "uschange-refit", body)
        state = _ask(http, "uschange", body)
    assert refit.status_code == state.status_code == 200, (refit.text, state.text)
    assert refit.json()["observations_mode"] == "refit" and state.json()["observations_mode"] == "state"
    expected = _expected(loaded.forecaster, y_new, x_new, "refit", 2)
    np.testing.assert_allclose(refit.json()["forecast"]["consumption"], expected.ravel(), rtol=1e-7)
    assert not np.allclose(refit.json()["forecast"]["consumption"], state.json()["forecast"]["consumption"])


def test_spec_state_for_a_model_that_ignores_it_fails_the_retrain(tmp_path: Path, start_server: ServerFactory) -> None:
    """`observations: state` for Theta would be a silent no-op: the retrain fails and says why,
    and nothing is published."""
    registry = tmp_path / "models"
    registry.mkdir()
    server = start_server(registry)
    server.wait_ready()
    with server.client() as http:
        put = http.put("/v1/models/theta-state", json=_spec("airline", observations="state"))
        assert put.status_code in (200, 201), put.text
        job = http.post("/v1/models/theta-state/retrain", json={"promote": "always"}).json()
        deadline = time.monotonic() + 120
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = http.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "failed", job
    assert "ignores new actuals with fixed parameters" in job["error"], job["error"]
    assert not (registry / "theta-state" / "versions" / "1").exists()


def test_panel_observations_for_some_series(server: ServerProcess, registry_path: Path) -> None:
    """Observations for 2 of the 60 tourism series: the answer covers those 2, and equals what
    a full-panel update gives them (whatever the other series' new values)."""
    loaded = Registry(registry_path).load("tourism-monthly", 1)
    y_new, _ = _next_actuals(loaded.forecaster, 0.3)
    chosen = sorted(y_new.index.get_level_values(0).unique())[:2]
    part = y_new[y_new.index.get_level_values(0).isin(chosen)]
    with server.client() as http:
        response = _ask(http, "tourism-monthly", {"observations": _wire(part, None, ["series", "month"], ["visitors"])})
        assert response.status_code == 200, response.text
        payload = response.json()
        assert sorted(set(payload["forecast"]["series"])) == chosen
        assert payload["cutoff"] == "2008-01-01"
        full = _ask(http, "tourism-monthly", {"observations": _wire(y_new, None, ["series", "month"], ["visitors"])})
        full_table = pd.DataFrame(full.json()["forecast"])
        expected = full_table[full_table["series"].isin(chosen)].reset_index(drop=True)
        np.testing.assert_allclose(payload["forecast"]["visitors"], expected["visitors"], rtol=1e-7)
        assert payload["forecast"]["month"] == expected["month"].tolist()
        # a series without observations cannot be asked about in the same request
        other = _ask(
            http,
            "tourism-monthly",
            {"observations": _wire(part, None, ["series", "month"], ["visitors"]), "series": [chosen[0], "T050"]},
        )
        assert other.status_code == 422, other.text
        assert "T050" in other.json()["detail"] and other.json().get("field") == "series"


def test_hierarchy_observations_must_cover_every_bottom_series(server: ServerProcess) -> None:
    body = {
        "observations": {
            "product_line": ["Food preparation"],
            "product_group": ["Hobs"],
            "month": ["2005-01-01"],
            "sales": [120.0],
        }
    }
    with server.client() as http:
        response = _ask(http, "sales-hierarchy", body)
    assert response.status_code == 422, response.text
    assert "every bottom series" in response.json()["detail"]
