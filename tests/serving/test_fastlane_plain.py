"""The fast lane answers small plain predict bodies itself (parsed, normalised, from the
precomputed table) with the bytes and headers the predict route gives for the same body,
and leaves everything else — live forecasts, every error — to the route."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from service.runtime import Runtime
from service.serving.fastlane import NORMALISED, PLAIN_BODY_BYTES, PREDICT_ROUTE, parse_plain
from tests.conftest import copy_specs, make_settings, wait_ready
from tests.factories import publish_naive
from tests.serving.test_fastlane import request_count

READ_KEY = "plain-lane-read-key-0123456789"
AUTH = {"Authorization": f"Bearer {READ_KEY}"}
ACCEPTS = ["application/json", "text/csv", "application/vnd.apache.arrow.stream", "*/*", "text/csv, application/json"]
VOLATILE = {"x-request-id", "date", "server"}

# (model, body, whether the lane answers it): fast answers, live answers and errors
BODIES: list[tuple[str, Any, bool]] = [
    ("airline", {}, True),
    ("airline", {"horizon": 3}, True),
    ("airline", {"fh": [3, 1, 3]}, True),
    ("airline", {"coverage": [0.95, 0.8]}, True),
    ("airline", {"quantiles": [0.5], "horizon": 2}, True),
    ("airline", {"horizon": 12, "coverage": [0.8], "quantiles": [0.9, 0.1, 0.9]}, True),
    ("airline", {"version": 1, "horizon": 4}, True),
    ("airline", {"alias": "production", "fh": [2]}, True),
    ("airline", {"horizon": None, "series": None, "version": None}, True),
    ("airline", {"horizon": 14}, False),  # past the precomputed horizon: live
    ("airline", {"coverage": [0.5]}, False),  # not precomputed: live
    ("airline", {"horizon": 0}, False),
    ("airline", {"horizon": 100000}, False),
    ("airline", {"horizon": True}, False),
    ("airline", {"horizon": 2.0}, False),
    ("airline", {"fh": []}, False),
    ("airline", {"fh": [1], "horizon": 2}, False),
    ("airline", {"coverage": [1.5]}, False),
    ("airline", {"coverage": [1]}, False),
    ("airline", {"coverage": None}, False),
    ("airline", {"series": ["x"]}, False),
    ("airline", {"version": 9}, False),
    ("airline", {"version": 0}, False),
    ("airline", {"alias": "nope"}, False),
    ("airline", {"extra": 1}, False),
    ("airline", [1, 2], False),
    ("toy", {"series": ["s1"]}, True),
    ("toy", {"series": [["s2"], "s0"], "horizon": 2}, True),
    ("toy", {"series": [{"series": "s1"}], "fh": [3]}, True),
    ("toy", {"series": ["s1", "s1"]}, True),
    ("toy", {"series": ["nope"]}, False),
    ("toy", {"series": []}, False),
    ("toy", {"series": [{"other": "s1"}]}, False),
    ("toy", {"series": [["s1", "s2"]]}, False),
    ("toy", {"series": [1]}, False),
    ("toy", {"coverage": [0.9]}, False),  # no precomputed intervals: live
    ("nomodel", {"horizon": 2}, False),
]


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_specs(tmp_path_factory.mktemp("plain-lane"), ["airline"])
    registry = Registry(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_publish(registry, "airline")
    publish_naive(registry, "toy")
    registry.set_alias("toy", "production", 1)
    return root


@pytest.fixture
def client(registry_root: Path) -> Iterator[TestClient]:
    settings = make_settings(registry_root, api_keys=f"read:{READ_KEY}", scheduler=False)
    with TestClient(create_app(settings)) as test_client:
        test_client.headers.update(AUTH)
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the predict route's runs past FastAPI's validation (the lane never gets here)."""
    calls: list[int] = []
    served = Runtime.served

    async def counted(self: Runtime, *args: Any) -> Any:
        calls.append(1)
        return await served(self, *args)

    monkeypatch.setattr(Runtime, "served", counted)
    return calls


def post(client: TestClient, model: str, content: bytes, accept: str, **headers: str) -> Any:
    return client.post(
        f"/v1/models/{model}/predict",
        content=content,
        headers={"content-type": "application/json", "accept": accept, "accept-encoding": "identity", **headers},
    )


def comparable(response: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in VOLATILE]
    return response.status_code, response.content, headers


def spelled(body: Any) -> bytes:
    return json.dumps(body).encode()


def padded(body: Any, extra: int = 0) -> bytes:
    """The same request in a body too large for the lane's parser: the route answers it."""
    return spelled(body) + b" " * (PLAIN_BODY_BYTES + 1 + extra)


def fast_path_count(client: TestClient, path: str) -> float:
    metrics = client.get("/metrics").text
    found = re.findall(r'forecast_fast_path_total\{model="[a-z]+",path="' + path + r'"\} ([0-9.e+]+)', metrics)
    return sum(float(v) for v in found)


def test_plain_bodies_answer_the_routes_bytes_and_headers(client: TestClient, route_calls: list[int]) -> None:
    statuses = set()
    for model, body, lane in BODIES:
        for pad, accept in enumerate(ACCEPTS):
            before = len(route_calls)
            want = post(client, model, padded(body, pad), accept)  # a new body: never in the cache
            routed_padded, before = len(route_calls) - before, len(route_calls)
            got = post(client, model, spelled(body), accept)
            routed_plain = len(route_calls) - before
            assert comparable(got) == comparable(want), (model, body, accept)
            if lane:
                assert got.status_code == 200 and (routed_padded, routed_plain) == (1, 0), (model, body, accept)
            else:  # the route (or FastAPI's validation before it) answered both
                assert routed_plain == routed_padded, (model, body, accept)
            statuses.add(want.status_code)
            if want.status_code != 200:
                assert want.headers["content-type"].startswith("application/problem+json"), (body, want.text)
    assert statuses == {200, 404, 422}


def test_errors_and_live_answers_go_to_the_route(client: TestClient, route_calls: list[int]) -> None:
    for body in ({"horizon": 0}, {"horizon": 14}, {"coverage": [0.5]}, {"version": 9}, {"series": ["x"]}):
        before = len(route_calls)
        post(client, "airline", spelled(body), "application/json")
        assert len(route_calls) == before + 1, body
    assert post(client, "airline", spelled({"horizon": 14}), "application/json").status_code == 200


def test_other_spellings_of_a_request_share_one_cached_answer(client: TestClient, route_calls: list[int]) -> None:
    spellings = [
        b'{"horizon": 5, "coverage": [0.8, 0.95]}',
        b'{"coverage":[0.95,0.8],"horizon":5}',
        b'{ "coverage" : [0.8, 0.95, 0.8] ,\n "horizon" : 5 }',
        b'{"horizon": 5, "coverage": [0.8, 0.95], "quantiles": [], "version": 1}',
    ]
    first = post(client, "airline", spellings[0], "application/json")
    cached_before = fast_path_count(client, "cache")
    answers = [post(client, "airline", s, "application/json") for s in spellings[1:]]
    assert all(comparable(a) == comparable(first) for a in answers)
    assert fast_path_count(client, "cache") == cached_before + len(answers)
    assert route_calls == []
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert any(NORMALISED + b"[1," in key for key in runtime.responses._items)


def test_series_spellings_of_a_panel_share_one_answer(client: TestClient, route_calls: list[int]) -> None:
    want = post(client, "toy", padded({"series": ["s2", "s0"]}), "text/csv")
    assert len(route_calls) == 1
    for body in ({"series": [["s2"], "s0"]}, {"series": [{"series": "s2"}, ["s0"]]}, {"series": ["s2", "s0"]}):
        assert comparable(post(client, "toy", spelled(body), "text/csv")) == comparable(want)
    assert len(route_calls) == 1
    assert b"s1" not in want.content and b"s2" in want.content


def test_the_lane_checks_the_key_and_leaves_other_content_types_to_the_route(
    client: TestClient, route_calls: list[int]
) -> None:
    body = spelled({"horizon": 2})
    refused = client.post("/v1/models/airline/predict", content=body, headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")
    text = {"content-type": "text/plain"}
    as_text = post(client, "airline", body, "application/json", **text)
    assert as_text.status_code in (400, 415, 422)
    assert comparable(as_text) == comparable(
        post(client, "airline", padded({"horizon": 2}), "application/json", **text)
    )
    assert post(client, "airline", b"", "application/json").status_code == 422
    assert route_calls == []  # FastAPI refused them before the route ran; the lane did not answer


def test_answers_are_counted_under_the_predict_route(client: TestClient, route_calls: list[int]) -> None:
    before = client.get("/metrics").text
    for h in range(1, 6):
        answer = post(client, "airline", spelled({"horizon": h, "coverage": [0.8]}), "application/json")
        assert answer.status_code == 200
    after = client.get("/metrics").text
    assert route_calls == []
    assert request_count(after, PREDICT_ROUTE) - request_count(before, PREDICT_ROUTE) == 5
    assert request_count(after, "unmatched") == 0
    predictions = r'forecast_predictions_total\{model="airline",version="1"\} ([0-9.e+]+)'
    assert float(re.findall(predictions, after)[0]) - float((re.findall(predictions, before) or [0])[0]) == 5
    assert fast_path_count(client, "fast") >= 5


@pytest.mark.parametrize(
    "body",
    [
        b'{"horizon": 2, "timestamps": ["1961-01-01"]}',
        b'{"observations": {}}',
        b'{"horizon": 1e0}',
        b'{"horizon": NaN}',
        b'{"horizon": 99999999999999999999999}',
        b'{"series": [[true]]}',
        b'{"series": [["a", 1.5]]}',
        b'{"quantiles": [0]}',
        b'{"alias": 3}',
        b"[]",
        b"not json",
    ],
)
def test_the_parser_leaves_anything_off_plain_to_the_route(body: bytes) -> None:
    assert parse_plain(body) is None


def test_the_parser_normalises_levels_as_the_schema_does() -> None:
    plain = parse_plain(b'{"coverage": [0.95, 0.8, 0.95], "quantiles": [0.9, 0.1], "fh": [3, 1]}')
    assert plain is not None
    assert plain.coverage == (0.8, 0.95) and plain.quantiles == (0.1, 0.9) and plain.fh == (3, 1)


def test_a_body_spelling_a_normalised_key_is_not_answered_from_it(client: TestClient) -> None:
    """A NUL-led body is not JSON (the route's 400), even when it spells a cached normalised key."""
    assert post(client, "airline", b'{"horizon": 5}', "application/json").status_code == 200
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    packed = [k.split(b"\n", 2) for k in runtime.responses._items]  # media, model, body
    keys = [(media, body) for media, model, body in packed if model == b"airline" and body.startswith(NORMALISED)]
    assert keys, "the plain body was cached under its normalised key"
    answer = post(client, "airline", keys[0][1], keys[0][0].decode())
    assert answer.status_code == 400 and answer.json()["field"] == "body", answer.text
