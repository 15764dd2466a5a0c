"""The HTTP contract on the real server (uvicorn): gzip on the wire for route and fast-lane
answers, 405 + Allow, 400 for a body that is not JSON, and /docs with nothing from a CDN."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import ServerProcess, copy_models, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("http-wire")
    registry = copy_models(trained_registry_path, root / "models", ["tourism-monthly"])
    yield from running_server(registry, root / "server.log")


def test_predict_is_gzipped_on_the_wire_by_the_route_and_by_the_fast_lane(server: ServerProcess) -> None:
    url = "/v1/models/tourism-monthly/predict"
    with server.client() as http:
        plain = http.post(url, json={}, headers={"accept-encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers
        for attempt in ("first", "repeat"):  # the repeat is served from the fast lane's cache
            with http.stream("POST", url, json={}, headers={"accept-encoding": "gzip"}) as zipped:
                raw = b"".join(zipped.iter_raw())  # the bytes as sent, not decoded
            assert zipped.status_code == 200, attempt
            assert zipped.headers["content-encoding"] == "gzip", attempt
            assert int(zipped.headers["content-length"]) == len(raw) < len(plain.content) / 2
            assert orjson.loads(gzip.decompress(raw)) == plain.json(), attempt
        assert re.search(
            r'forecast_fast_path_total\{model="tourism-monthly",path="cache"\} [1-9]', http.get("/metrics").text
        )


def test_wrong_method_and_not_json_bodies_on_the_wire(server: ServerProcess) -> None:
    with server.client() as http:
        wrong = http.get("/v1/models/tourism-monthly/predict")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        assert wrong.headers["content-type"] == "application/problem+json"
        broken = http.post(
            "/v1/models/tourism-monthly/predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and broken.json()["title"] == "Malformed JSON"


def test_docs_load_everything_from_the_server_itself(server: ServerProcess) -> None:
    with server.client() as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert not re.search(r"https?://", page.text)
        assets = re.findall(r"""(?:src|href)="(/[^"]+)\"""", page.text)
        assert len(assets) >= 2
        for asset in assets:
            answer = http.get(asset, headers={"accept-encoding": "gzip"})
            assert answer.status_code == 200 and answer.content, asset
