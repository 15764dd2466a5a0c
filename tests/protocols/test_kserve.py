"""KServe's time-series protocol, driven with KServe's own pydantic types (dev extra ``kserve``,
``kserve.protocol.rest.timeseries.types``): requests are built with its ``ForecastRequest``,
answers validated with its ``ForecastResponse`` and errors with its ``ErrorResponse``, plus the
checks KServe's own time-series tests make (names echo inputs, horizon length, start shifted
by the input length, every quantile key, quantiles non-decreasing in q). The numbers equal
our predict route's for the same query, and sktime's called directly on the version."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dateutil.parser
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from kserve.protocol.rest.timeseries.types import (
    FREQUENCY_MAP,
    ErrorResponse,
    ForecastOptions,
    ForecastRequest,
    ForecastResponse,
    Frequency,
    TimeSeriesInput,
    TimeSeriesType,
)

from service.app import create_app
from service.registry.store import Registry
from tests.conftest import make_settings, wait_ready

FORECAST = "/v1/timeseries/forecast"
UNI, MULTI = TimeSeriesType.UNIVARIATE, TimeSeriesType.MULTIVARIATE


def request(model: str, *inputs: TimeSeriesInput, horizon: int = 6, quantiles: list[float] | None = None) -> Any:
    return ForecastRequest(
        model=model, inputs=list(inputs), options=ForecastOptions(horizon=horizon, quantiles=quantiles)
    ).model_dump(mode="json", exclude_none=True)


def series(name: str, values: list[Any], frequency: Frequency = Frequency.MONTH, **kw: Any) -> TimeSeriesInput:
    return TimeSeriesInput(type=kw.pop("type", UNI), name=name, series=values, frequency=frequency, **kw)


def forecast(client: TestClient, body: Any) -> ForecastResponse:
    r = client.post(FORECAST, json=body)
    assert r.status_code == 200, r.text
    return ForecastResponse.model_validate(r.json())


def refused(client: TestClient, body: Any, status: int, param: str | None = None, **kw: Any) -> str:
    r = (
        client.post(FORECAST, json=body, **kw)
        if not isinstance(body, bytes)
        else client.post(FORECAST, content=body, **kw)
    )
    assert r.status_code == status, r.text
    error = ErrorResponse.model_validate(r.json()).error
    assert error.code == str(status)
    if param is not None:
        assert error.param == param, error
    return error.message


def kserve_checks(body: Any, answer: ForecastResponse) -> None:
    """What KServe's own time-series tests check of an answer."""
    (output,) = answer.outputs
    assert answer.status == "completed" and output.status == "completed"
    assert [c.name for c in output.content] == [i["name"] for i in body["inputs"]]
    horizon, quantiles = body["options"]["horizon"], body["options"].get("quantiles") or []
    for item, content in zip(body["inputs"], output.content, strict=True):
        assert len(content.mean_forecast) == horizon
        if item.get("start_timestamp"):
            shifted = FREQUENCY_MAP[item["frequency"]](len(item["series"]))
            assert (
                dateutil.parser.parse(content.start_timestamp)
                == dateutil.parser.parse(item["start_timestamp"]) + shifted
            )
        if quantiles:
            assert set(content.quantiles or {}) == {str(q) for q in quantiles}
            ordered = np.array([content.quantiles[str(q)] for q in sorted(quantiles)], dtype=float)
            assert (np.diff(ordered, axis=0) >= -1e-9).all()


@pytest.fixture
def client(registry_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(registry_path))) as test_client:
        wait_ready(test_client)
        yield test_client


def ours(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, list[Any]]:
    r = client.post(f"/v1/models/{name}/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()["forecast"]


def test_airline_equals_sktime_and_our_predict_with_and_without_new_actuals(
    client: TestClient, registry_path: Path
) -> None:
    quantiles = [0.1, 0.5, 0.9]
    body = request("airline", series("passengers", []), horizon=12, quantiles=quantiles)
    answer = forecast(client, body)
    kserve_checks(body, answer)
    (content,) = answer.outputs[0].content
    assert content.start_timestamp == "1961-01-01"
    forecaster = Registry(registry_path).load("airline", 1).forecaster
    fh = list(range(1, 13))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = forecaster.predict(fh=fh)
        levels = forecaster.predict_quantiles(fh=fh, alpha=quantiles)
    np.testing.assert_allclose(content.mean_forecast, point.to_numpy().ravel(), rtol=1e-12)
    for q in quantiles:
        np.testing.assert_allclose(
            content.quantiles[str(q)], levels.xs(q, axis=1, level=-1).to_numpy().ravel(), rtol=1e-12
        )

    actuals = [417.0, 391.0, 419.0]
    body = request(
        "airline", series("passengers", actuals, start_timestamp="1961-01-01"), horizon=4, quantiles=quantiles
    )
    answer = forecast(client, body)
    kserve_checks(body, answer)
    (content,) = answer.outputs[0].content
    assert content.start_timestamp == "1961-04-01"
    table = ours(
        client,
        "airline",
        {
            "horizon": 4,
            "quantiles": quantiles,
            "observations": {"month": ["1961-01", "1961-02", "1961-03"], "passengers": actuals},
        },
    )
    assert content.mean_forecast == table["passengers"]
    assert content.quantiles == {str(q): table[f"passengers_q{q:g}"] for q in quantiles}
    moved = forecast(client, request("airline", series("passengers", [500.0, 500.0, 500.0]), horizon=4))
    assert moved.outputs[0].content[0].mean_forecast != content.mean_forecast  # the actuals were used
    assert moved.outputs[0].content[0].start_timestamp == "1961-04-01"  # no start: right after the cutoff


def test_a_panel_names_series_by_key_and_mixes_inputs_with_and_without_actuals(
    client: TestClient, registry_path: Path
) -> None:
    body = request(
        "tourism-monthly@production",
        series("T002", [], frequency=Frequency.MONTH_SHORT),
        series("T001", [3000.0, 2900.0], frequency=Frequency.MONTH_SHORT, start_timestamp="2008-01-01"),
        horizon=3,
        quantiles=[0.05, 0.5, 0.95],
    )
    answer = forecast(client, body)
    kserve_checks(body, answer)
    t002, t001 = answer.outputs[0].content
    plain = ours(client, "tourism-monthly", {"series": ["T002"], "horizon": 3, "quantiles": [0.05, 0.5, 0.95]})
    assert t002.mean_forecast == plain["visitors"] and t002.start_timestamp == "2008-01-01"
    assert t002.quantiles["0.95"] == plain["visitors_q0.95"]
    after = ours(
        client,
        "tourism-monthly",
        {
            "horizon": 3,
            "quantiles": [0.05, 0.5, 0.95],
            "observations": {"series": ["T001", "T001"], "month": ["2008-01", "2008-02"], "visitors": [3000.0, 2900.0]},
        },
    )
    assert t001.mean_forecast == after["visitors"] and t001.start_timestamp == "2008-03-01"
    forecaster = Registry(registry_path).load("tourism-monthly", 1).forecaster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = forecaster.predict(fh=[1, 2, 3])
    np.testing.assert_allclose(t002.mean_forecast, direct.xs("T002", level=0).to_numpy().ravel(), rtol=1e-6)


def test_hierarchy_nodes_and_multivariate_models(client: TestClient) -> None:
    nodes = ours(client, "sales-hierarchy", {"horizon": 1})
    keys = list(zip(nodes["product_line"], nodes["product_group"], strict=True))
    leaf = next(k for k in keys if "__total" not in k)
    node = next(k for k in keys if k[1] == "__total" and k[0] != "__total")
    body = request("sales-hierarchy:1", series("/".join(leaf), []), series("/".join(node), []), horizon=4)
    answer = forecast(client, body)
    kserve_checks(body, answer)
    table = ours(client, "sales-hierarchy", {"horizon": 4, "series": [list(leaf), list(node)]})
    frame = pd.DataFrame(table)
    for content, key in zip(answer.outputs[0].content, (leaf, node), strict=True):
        rows = frame[(frame.product_line == key[0]) & (frame.product_group == key[1])]
        assert content.mean_forecast == rows["sales"].tolist()

    steps = [[2.5, 1.0, 6.0], [2.0, 1.5, 6.1]]
    body = request("macro-var", series("us", steps, frequency=Frequency.QUARTER, type=MULTI), horizon=3)
    answer = forecast(client, body)
    kserve_checks(body, answer)
    (content,) = answer.outputs[0].content
    table = ours(
        client,
        "macro-var",
        {
            "horizon": 3,
            "observations": {
                "quarter": ["2009-10", "2010-01"],
                "infl": [2.5, 2.0],
                "realint": [1.0, 1.5],
                "unemp": [6.0, 6.1],
            },
        },
    )
    assert content.mean_forecast == [list(r) for r in zip(table["infl"], table["realint"], table["unemp"], strict=True)]
    assert content.start_timestamp == "2010-04-01"


def test_the_model_list_names_models_the_protocol_can_forecast(client: TestClient) -> None:
    r = client.get("/v1/timeseries/models")
    assert r.status_code == 200
    assert r.json() == ["airline", "macro-var", "sales-hierarchy", "tourism-monthly"]  # uschange needs exogenous


def test_bad_requests_answer_in_kserves_error_form(client: TestClient) -> None:
    ok = series("passengers", [])
    assert "no model named 'nope'" in refused(client, request("nope", ok), 404)
    assert "alias" in refused(client, request("airline@nope", ok), 404)
    refused(client, request("airline:99", ok), 404)
    assert "'name:version'" in refused(client, request("airline:x", ok), 422, "model")
    assert "series" in refused(client, request("tourism-monthly", series("T999", [])), 404)
    assert "1 part(s)" in refused(client, request("sales-hierarchy", series("Food", [])), 422, "inputs[0].name")
    assert "again" in refused(client, request("tourism-monthly", series("T001", []), series("T001", [])), 422)
    assert "between 0 and 1" in refused(client, request("airline", ok, quantiles=[0.5, 1.5]), 422, "options.quantiles")
    assert "between 0 and 1" in refused(client, request("airline", ok, quantiles=[0.0]), 422, "options.quantiles")
    assert "frequency 'M'" in refused(
        client, request("airline", series("passengers", [], frequency=Frequency.DAY)), 422, "inputs[0].frequency"
    )
    refused(client, request("airline", series("passengers", [1.0], frequency=Frequency.QUARTER)), 422)
    assert "exogenous" in refused(
        client, request("uschange", series("c", [], frequency=Frequency.QUARTER)), 422, "model"
    )
    assert "multivariate" in refused(
        client, request("macro-var", series("us", [], frequency=Frequency.QUARTER)), 422, "inputs[0].type"
    )
    assert "3 numbers" in refused(
        client, request("macro-var", series("us", [[1.0, 2.0]], frequency=Frequency.QUARTER, type=MULTI)), 422
    )
    refused(client, request("airline", ok, horizon=0), 422, "options.horizon")
    assert "maximum is 500" in refused(client, request("airline", ok, horizon=10_000), 422)
    refused(client, request("airline", series("p", [1.0], start_timestamp="not a time")), 422)
    refused(client, request("airline", series("p", [1.0], start_timestamp="1950-01-01")), 422)  # before the cutoff
    refused(client, {"model": "airline", "inputs": []}, 422)  # options missing
    refused(client, {"model": "airline", "inputs": [{"type": "nope"}], "options": {"horizon": 2}}, 422)
    refused(client, b"{not json", 400, headers={"content-type": "application/json"})
    refused(client, request("airline"), 422, "inputs")  # no inputs
    # nothing about the service changed: a good request still answers
    forecast(client, request("airline", ok))


def test_keys_are_required_when_configured_and_answered_in_kserves_form(registry_path: Path) -> None:
    settings = make_settings(registry_path, api_keys="admin:kserve-admin-key-0123456789,read:kserve-read-key-012345678")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = request("airline", series("passengers", []))
        refused(client, body, 401)
        r = client.get("/v1/timeseries/models")
        assert r.status_code == 401 and ErrorResponse.model_validate(r.json()).error.code == "401"
        good = client.post(FORECAST, json=body, headers={"Authorization": "Bearer kserve-read-key-012345678"})
        assert good.status_code == 200
        ForecastResponse.model_validate(good.json())
