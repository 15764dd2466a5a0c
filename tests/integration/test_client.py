"""`service.client.Client` against a live server (uvicorn subprocess)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from service.client import Client, ForecastServiceError

from .conftest import ServerProcess

pytestmark = pytest.mark.slow

USCHANGE_CUTOFF = 186
EXOGENOUS = ["income", "production", "savings", "unemployment"]


@pytest.fixture
def client(live_server: ServerProcess) -> Iterator[Client]:
    with Client(live_server.base_url, timeout=30.0) as api:
        yield api


def json_predict(server: ServerProcess, name: str, body: dict) -> dict:
    with server.client(timeout=30.0) as http:
        response = http.post(f"/v1/models/{name}/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_table(frame: pd.DataFrame, forecast: dict) -> None:
    assert list(frame.columns) == list(forecast)
    for column, values in forecast.items():
        if isinstance(values[0], str):
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
    assert frame["month"].tolist() == ["1961-01-01", "1961-06-01", "1962-06-01"]


def test_numpy_arguments_are_sent_as_plain_json(client: Client) -> None:
    frame = client.predict("airline", fh=np.array([1, 2]), coverage=np.array([0.8]), version=np.int64(1))
    assert frame["month"].tolist() == ["1961-01-01", "1961-02-01"]
    assert "passengers_lower_80" in frame.columns


def test_timestamps_accept_pandas_periods(client: Client) -> None:
    frame = client.predict("airline", timestamps=[pd.Period("1961-03", freq="M"), "1961-05-01"])
    assert frame["month"].tolist() == ["1961-03-01", "1961-05-01"]


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
    assert frame["month"].tolist() == ["1961-04-01", "1961-05-01", "1961-06-01"]
    assert_same_table(frame, expected["forecast"])


def test_exogenous_with_an_integer_time_column(client: Client, live_server: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    horizon = 4
    exogenous = pd.DataFrame(
        {"quarter": np.arange(USCHANGE_CUTOFF + 1, USCHANGE_CUTOFF + 1 + horizon, dtype="int64")}
        | {c: rng.normal(0.5, 0.5, horizon) for c in EXOGENOUS}
    )

    frame = client.predict("uschange", horizon=horizon, coverage=[0.8], exogenous=exogenous)

    assert frame.attrs == {"model": "uschange", "version": 1, "cutoff": USCHANGE_CUTOFF}
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
    assert frame["month"].iloc[0] == "2008-01-01"
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
