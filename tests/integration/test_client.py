"""`service.client.Client` against a live server (uvicorn subprocess)."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sktime.datasets import load_airline

from service.client import Client, ForecastServiceError, JobFailed
from service.registry.store import Registry

from .conftest import ServerProcess, copy_models, running_server

pytestmark = pytest.mark.slow

USCHANGE_CUTOFF = 186
EXOGENOUS = ["income", "production", "savings", "unemployment"]


@pytest.fixture(scope="module")
def live_server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The trained airline, uschange and tourism-monthly models, with a private data folder
    (the dataset, spec and retrain tests write to it)."""
    root = tmp_path_factory.mktemp("client-server")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "uschange", "tourism-monthly"])
    yield from running_server(registry, root / "server.log", data_dir=root / "data")


@pytest.fixture
def client(live_server: ServerProcess) -> Iterator[Client]:
    with Client(live_server.base_url, timeout=30.0) as api:
        yield api


def json_predict(server: ServerProcess, name: str, body: dict) -> dict:
    with server.client(timeout=30.0) as http:
        response = http.post(f"/v1/models/{name}/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wire_times(frame: pd.DataFrame, column: str) -> list[Any]:
    """A typed time column as the wire writes it (a period by its start day)."""
    values = frame[column]
    if isinstance(values.dtype, pd.PeriodDtype):
        return [p.start_time.strftime("%Y-%m-%d") for p in values]
    return values.tolist()


def assert_same_table(frame: pd.DataFrame, forecast: dict) -> None:
    assert list(frame.columns) == list(forecast)
    for column, values in forecast.items():
        if isinstance(frame[column].dtype, pd.PeriodDtype):
            assert wire_times(frame, column) == values, column
        elif isinstance(values[0], str):
            assert frame[column].tolist() == values, column
        else:
            np.testing.assert_array_equal(frame[column].to_numpy(dtype="float64"), np.asarray(values, dtype="float64"))


def test_predict_matches_the_json_endpoint(client: Client, live_server: ServerProcess) -> None:
    frame = client.predict("airline", horizon=12, coverage=[0.8, 0.95], quantiles=[0.5])
    expected = json_predict(live_server, "airline", {"horizon": 12, "coverage": [0.8, 0.95], "quantiles": [0.5]})

    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 12
    assert_same_table(frame, expected["forecast"])
    assert frame.attrs == {"model": "airline", "version": expected["version"], "cutoff": expected["cutoff"]}
    assert frame.attrs["cutoff"] == "1960-12-01"
    assert (frame["passengers_lower_95"] < frame["passengers_lower_80"]).all()
    assert (frame["passengers_upper_80"] < frame["passengers_upper_95"]).all()


def test_predict_live_path_and_fh_match_the_json_endpoint(client: Client, live_server: ServerProcess) -> None:
    frame = client.predict("airline", fh=[1, 6, 18], coverage=[0.9])  # beyond the precomputed table: sktime
    expected = json_predict(live_server, "airline", {"fh": [1, 6, 18], "coverage": [0.9]})
    assert_same_table(frame, expected["forecast"])
    assert frame["month"].tolist() == [pd.Period("1961-01", "M"), pd.Period("1961-06", "M"), pd.Period("1962-06", "M")]


def test_numpy_arguments_are_sent_as_plain_json(client: Client) -> None:
    frame = client.predict("airline", fh=np.array([1, 2]), coverage=np.array([0.8]), version=np.int64(1))
    assert wire_times(frame, "month") == ["1961-01-01", "1961-02-01"]
    assert "passengers_lower_80" in frame.columns


def test_timestamps_accept_pandas_periods(client: Client) -> None:
    frame = client.predict("airline", timestamps=[pd.Period("1961-03", freq="M"), "1961-05-01"])
    assert wire_times(frame, "month") == ["1961-03-01", "1961-05-01"]


def test_version_and_alias_are_sent(client: Client) -> None:
    assert client.predict("airline", horizon=2, version=1).attrs["version"] == 1
    assert client.predict("airline", horizon=2, alias="production").attrs["version"] == 1


@pytest.mark.parametrize("shape", ["period_index", "month_column", "string_column"])
def test_observations_dataframe(client: Client, live_server: ServerProcess, shape: str) -> None:
    months = pd.period_range("1961-01", periods=3, freq="M", name="month")
    values = [417.0, 391.0, 419.0]
    observations = {
        "period_index": pd.DataFrame({"passengers": values}, index=months),
        "month_column": pd.DataFrame({"month": months, "passengers": values}),
        "string_column": pd.DataFrame({"month": ["1961-01-01", "1961-02-01", "1961-03-01"], "passengers": values}),
    }[shape]

    frame = client.predict("airline", horizon=3, coverage=[0.8], observations=observations)

    expected = json_predict(
        live_server,
        "airline",
        {
            "horizon": 3,
            "coverage": [0.8],
            "observations": {"month": ["1961-01-01", "1961-02-01", "1961-03-01"], "passengers": values},
        },
    )
    assert frame.attrs["cutoff"] == "1961-03-01" == expected["cutoff"]
    assert wire_times(frame, "month") == ["1961-04-01", "1961-05-01", "1961-06-01"]
    assert_same_table(frame, expected["forecast"])


def test_exogenous_with_an_integer_time_column(client: Client, live_server: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    horizon = 4
    exogenous = pd.DataFrame(
        {"quarter": np.arange(USCHANGE_CUTOFF + 1, USCHANGE_CUTOFF + 1 + horizon, dtype="int64")}
        | {c: rng.normal(0.5, 0.5, horizon) for c in EXOGENOUS}
    )

    frame = client.predict("uschange", horizon=horizon, coverage=[0.8], exogenous=exogenous)

    assert {k: frame.attrs[k] for k in ("model", "version", "cutoff")} == {
        "model": "uschange",
        "version": 1,
        "cutoff": USCHANGE_CUTOFF,
    }
    assert frame["quarter"].tolist() == [187, 188, 189, 190]
    expected = json_predict(
        live_server,
        "uschange",
        {"horizon": horizon, "coverage": [0.8], "exogenous": {c: exogenous[c].tolist() for c in exogenous}},
    )
    assert_same_table(frame, expected["forecast"])


def test_series_subset_of_a_panel(client: Client, live_server: ServerProcess) -> None:
    manifest = json.loads((live_server.registry / "tourism-monthly/versions/1/manifest.json").read_text())
    first, second, third = (ids[0] for ids in manifest["series"]["ids"][:3])

    frame = client.predict("tourism-monthly", horizon=6, series=[first, (second,), {"series": third}])

    assert list(frame.columns) == ["series", "month", "visitors"]
    assert sorted(frame["series"].unique()) == sorted([first, second, third])
    assert len(frame) == 3 * 6
    assert frame["month"].iloc[0] == pd.Period("2008-01", "M")
    assert frame.attrs["cutoff"] == "2007-12-01"


def test_models_and_model(client: Client) -> None:
    listed = {m["name"]: m for m in client.models()}
    assert set(listed) == {"airline", "uschange", "tourism-monthly"}
    assert listed["airline"]["production_version"] == 1
    detail = client.model("airline")
    assert detail["name"] == "airline"
    assert detail["aliases"] == {"production": 1}
    assert [v["version"] for v in detail["versions"]] == [1]


def test_unknown_model_raises_404(client: Client) -> None:
    with pytest.raises(ForecastServiceError) as info:
        client.predict("no-such-model", horizon=3)
    assert info.value.status == 404
    assert info.value.title == "Model not found"
    assert "no-such-model" in info.value.detail
    assert info.value.body["status"] == 404
    with pytest.raises(ForecastServiceError) as info:
        client.model("no-such-model")
    assert info.value.status == 404


def test_unknown_series_raises_404(client: Client) -> None:
    with pytest.raises(ForecastServiceError) as info:
        client.predict("tourism-monthly", horizon=3, series=["nope"])
    assert info.value.status == 404
    assert "nope" in info.value.detail


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"horizon": 3, "coverage": [1.5]}, "coverage"),  # request validation
        ({"horizon": 3}, "exogenous"),  # uschange needs future exogenous values
    ],
)
def test_invalid_requests_raise_422(client: Client, kwargs: dict, needle: str) -> None:
    with pytest.raises(ForecastServiceError) as info:
        client.predict("uschange", **kwargs)
    assert info.value.status == 422
    assert needle in info.value.detail
    assert info.value.body["type"].startswith("/problems/")
    assert isinstance(info.value, Exception)


def test_api_key_is_sent_as_bearer(live_server: ServerProcess) -> None:
    with Client(live_server.base_url, api_key="s3cret") as api:
        assert api.http.headers["Authorization"] == "Bearer s3cret"
        assert api.predict("airline", horizon=1).attrs["model"] == "airline"
    with Client(live_server.base_url) as api:
        assert "Authorization" not in api.http.headers


# --------------------------------------------------------------------------- issue 12: the rest of the API
def artifact(server: ServerProcess, name: str) -> Any:
    """The version-1 forecaster, unpickled from the server's own registry folder."""
    return Registry(server.registry).load(name, 1).forecaster


def sent_bodies(api: Client) -> list[dict[str, Any]]:
    """JSON bodies of the requests ``api`` sends from now on."""
    bodies: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        if request.headers.get("content-type") == "application/json":
            bodies.append(json.loads(request.content))

    api.http.event_hooks["request"].append(record)
    return bodies


def test_time_columns_are_periods_integers_or_timestamps(client: Client) -> None:
    monthly = client.predict("airline", horizon=2)
    assert monthly["month"].dtype == pd.PeriodDtype("M")
    stamps = client.predict("airline", horizon=2, time_as="timestamp")
    assert stamps["month"].tolist() == [pd.Timestamp("1961-01-01"), pd.Timestamp("1961-02-01")]
    wire = client.predict("airline", horizon=2, time_as="wire")
    assert wire["month"].tolist() == ["1961-01-01", "1961-02-01"]
    panel = client.predict("tourism-monthly", horizon=1, series=["T001"])
    assert panel["month"].tolist() == [pd.Period("2008-01", "M")] and panel["series"].tolist() == ["T001"]


def test_predict_equals_sktime_on_the_artifact(client: Client, live_server: ServerProcess) -> None:
    forecaster = artifact(live_server, "airline")
    fh = [1, 2, 3, 12, 18]
    frame = client.predict("airline", fh=fh, coverage=[0.9], quantiles=[0.1])
    # sktime 1.2's Theta misplaces the season on a gapped fh (step 12: 487.3 instead of 448.8):
    # the service forecasts steps 1..18 and keeps those asked for, as this does
    every = list(range(1, max(fh) + 1))
    rows = [step - 1 for step in fh]
    point = forecaster.predict(fh=every).iloc[rows]
    interval = forecaster.predict_interval(fh=every, coverage=0.9).iloc[rows]
    quantile = forecaster.predict_quantiles(fh=every, alpha=[0.1]).iloc[rows]
    assert frame["month"].tolist() == list(point.index)
    np.testing.assert_allclose(frame["passengers"], point.to_numpy(dtype="float64").ravel(), rtol=1e-12)
    np.testing.assert_allclose(frame["passengers_lower_90"], interval.iloc[:, 0], rtol=1e-12)
    np.testing.assert_allclose(frame["passengers_upper_90"], interval.iloc[:, 1], rtol=1e-12)
    np.testing.assert_allclose(frame["passengers_q0.1"], quantile.iloc[:, 0], rtol=1e-12)


def test_sktime_style_y_observations_equal_sktime_update(client: Client, live_server: ServerProcess) -> None:
    y = load_airline()  # a Series named 'Number of airline passengers' on a PeriodIndex named 'Period'
    y_new = pd.Series([417.0, 391.0], index=pd.period_range("1961-01", periods=2, freq="M", name=y.index.name))
    frame = client.predict("airline", horizon=3, observations=y_new)

    private = pickle.loads(pickle.dumps(artifact(live_server, "airline")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private.update(y_new.rename("passengers"), update_params=frame.attrs["observations_mode"] == "refit")
    expected = private.predict(fh=[1, 2, 3])
    assert frame.attrs["cutoff"] == "1961-02-01"
    assert frame["month"].tolist() == list(expected.index)
    np.testing.assert_allclose(frame["passengers"], expected.to_numpy(dtype="float64").ravel(), rtol=1e-12)


def test_sktime_style_x_exogenous_equals_sktime(client: Client, live_server: ServerProcess) -> None:
    rng = np.random.default_rng(1)
    steps = np.arange(USCHANGE_CUTOFF + 1, USCHANGE_CUTOFF + 4)
    x = pd.DataFrame({c: rng.normal(0.5, 0.5, len(steps)) for c in EXOGENOUS}, index=pd.Index(steps))
    frame = client.predict("uschange", horizon=3, coverage=[0.8], exogenous=x)
    forecaster = artifact(live_server, "uschange")
    point = forecaster.predict(fh=[1, 2, 3], X=x)
    interval = forecaster.predict_interval(fh=[1, 2, 3], X=x, coverage=0.8)
    assert frame["quarter"].tolist() == steps.tolist()
    np.testing.assert_allclose(frame["consumption"], point.to_numpy(dtype="float64").ravel(), rtol=1e-12)
    np.testing.assert_allclose(frame["consumption_lower_80"], interval.iloc[:, 0], rtol=1e-12)


def test_panel_observations_of_one_series_are_sent_as_given(client: Client) -> None:
    index = pd.MultiIndex.from_tuples([("T001", pd.Period("2008-01", "M"))], names=[None, None])
    y = pd.Series([1000.0], index=index)
    bodies = sent_bodies(client)
    frame = client.predict("tourism-monthly", horizon=2, series=["T001"], observations=y)
    assert bodies[-1]["observations"] == {"series": ["T001"], "month": ["2008-01-01"], "visitors": [1000.0]}
    assert frame["series"].tolist() == ["T001", "T001"]
    assert frame["month"].tolist() == [pd.Period("2008-02", "M"), pd.Period("2008-03", "M")]
    assert frame.attrs["cutoff"] == "2008-01-01"


def test_datasets_spec_retrain_and_wait(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    y = load_airline()
    info = client.upload_dataset("passengers", y.iloc[:-1], time="month", targets=["passengers"], freq="M")
    assert info["name"] == "passengers" and info["versions"][-1]["rows"] == 143
    assert info["versions"][-1]["end"] == "1960-11-01"
    appended = client.append("passengers", y.iloc[-1:])  # sktime-style: roles from the dataset
    assert appended["versions"][-1]["rows"] == 144 and appended["latest"] != info["latest"]
    assert [d["name"] for d in client.datasets()] == ["passengers"]
    assert client.dataset("passengers")["latest"] == appended["latest"]

    spec = {
        "data": {"source": {"dataset": "passengers"}, "time": "month", "targets": ["passengers"]},
        "freq": "M",
        "horizon": 6,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
    }
    assert client.put_spec("naive", spec)["name"] == "naive"
    job = client.retrain("naive", wait=True)
    assert job["status"] == "succeeded" and job["result"]["version"] == 1
    assert "retrain naive" in capsys.readouterr().err  # the progress bar
    assert client.job(job["id"])["status"] == "succeeded"
    assert job["id"] in [j["id"] for j in client.jobs(model="naive")]
    frame = client.predict("naive", horizon=2)
    assert frame["passengers"].tolist() == [432.0, 432.0]
    assert frame["month"].tolist() == [pd.Period("1961-01", "M"), pd.Period("1961-02", "M")]

    backtest = client.backtest("naive", {"type": "folds", "folds": 2, "horizon": 6}, metrics=["MAE"], wait=True)
    assert backtest["status"] == "succeeded" and len(backtest["result"]["folds"]) == 2
    with pytest.raises(ForecastServiceError) as info_404:
        client.cancel(backtest["id"])  # finished: nothing to cancel
    assert info_404.value.status == 409


def test_wait_raises_for_a_failed_job_unless_told_not_to() -> None:
    failed = {"id": "f" * 32, "kind": "retrain", "model": "m", "status": "failed", "error": "boom", "progress": {}}
    with Client("http://127.0.0.1:9") as api:
        with pytest.raises(JobFailed, match="boom"):
            api.wait(failed, progress=False)
        assert api.wait(failed, progress=False, check=False)["status"] == "failed"


def test_retry_after_is_honoured_on_503(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "2"}, json={"title": "Busy", "detail": "busy"}),
            httpx.Response(503, headers={"Retry-After": "1"}, json={"title": "Busy", "detail": "busy"}),
            httpx.Response(200, json={"models": [{"name": "airline"}]}),
        ]
    )
    slept: list[float] = []
    monkeypatch.setattr("service.client.time.sleep", slept.append)
    with Client("http://forecast.test", transport=httpx.MockTransport(lambda request: next(answers))) as api:
        assert api.models() == [{"name": "airline"}]
    assert slept == [2.0, 1.0]

    always_busy = httpx.MockTransport(lambda request: httpx.Response(503, json={"title": "Busy", "detail": "x"}))
    with Client("http://forecast.test", transport=always_busy) as api, pytest.raises(ForecastServiceError) as info:
        api.models()  # no Retry-After: answered at once
    assert info.value.status == 503


def test_listings_follow_next_page_token() -> None:
    pages = {None: {"jobs": [{"id": "a"}], "next_page_token": "t1"}, "t1": {"jobs": [{"id": "b"}]}}
    seen: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, json=pages[request.url.params.get("page_token")])

    with Client("http://forecast.test", transport=httpx.MockTransport(answer)) as api:
        assert [j["id"] for j in api.jobs(model="airline", dry=True)] == ["a", "b"]
    assert seen == [{"model": "airline", "dry": "true"}, {"model": "airline", "dry": "true", "page_token": "t1"}]
