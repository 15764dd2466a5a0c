"""Storage faults and state on disk: a full disk is a 507 and a read-only folder a 503 (the
server keeps serving, nothing stored is lost), an invalid model.yaml is a 409 naming it,
and values a JSON encoder cannot carry never make a 500."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import make_settings, wait_ready

from .conftest import ServerFactory, copy_models, publish_naive

PROBLEM_JSON = "application/problem+json"
CSV = b"t,y\n1,1.0\n2,2.0\n3,3.5\n4,4.0\n5,4.5\n6,5.0\n"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[object]:
    """``tmpfs(name, size)`` mounts a small tmpfs (real ENOSPC / EROFS); all unmounted after."""
    mounts: list[Path] = []

    def mount(name: str, size: str = "4m") -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], check=False)


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def fill(point: Path) -> None:
    """Write until the file system is full."""
    with open(point / "ballast", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def assert_problem(response, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert words in response.json()["detail"]
    assert "/" + "tmp" not in response.text  # no path of ours in the body


@pytest.mark.slow
def test_a_read_only_data_folder_still_serves_and_writes_are_503(
    trained_registry_path: Path, tmp_path: Path, tmpfs, start_server: ServerFactory
) -> None:  # type: ignore[no-untyped-def]
    registry = copy_models(trained_registry_path, tmp_path / "models", ["airline"])
    data = tmpfs("data")
    remount_read_only(data)
    server = start_server(registry, FORECAST_DATA_DIR=str(data))
    server.wait_ready()
    with server.client(timeout=30) as http:
        assert http.post("/v1/models/airline/predict", json={"horizon": 3}).status_code == 200
        upload = http.put("/v1/datasets/sales?time=t&targets=y", content=CSV, headers={"Content-Type": "text/csv"})
        assert_problem(upload, 503, "read-only")
        assert int(upload.headers["Retry-After"]) > 0
        assert_problem(http.post("/v1/models/airline/backtests", json={"splitter": {"folds": 2}}), 503, "read-only")
        assert_problem(http.get("/v1/jobs"), 503, "read-only")
        metrics = http.get("/metrics").text
        assert 'status="500"' not in metrics
        # still serving, and alias moves (the registry is writable) still work
        assert http.put("/v1/models/airline/aliases/candidate", json={"version": 1}).status_code == 200
        assert http.get("/readyz").status_code == 200


def test_a_full_disk_is_507_and_nothing_stored_is_lost(tmp_path: Path, tmpfs) -> None:  # type: ignore[no-untyped-def]
    root = tmpfs("registry", "8m")
    registry_dir = root / "models"
    from service.registry.store import Registry

    registry = Registry(registry_dir)
    publish_naive(registry, "toy")
    registry.set_alias("toy", "production", 1)
    aliases_before = (registry_dir / "toy" / "aliases.json").read_bytes()
    data = tmpfs("data", "8m")
    with TestClient(create_app(make_settings(registry_dir, data_dir=data, scheduler=False))) as client:
        wait_ready(client)
        first = client.put("/v1/datasets/sales?time=t&targets=y", content=CSV, headers={"Content-Type": "text/csv"})
        assert first.status_code == 200, first.text
        fill(root)
        fill(data)
        assert_problem(client.put("/v1/models/toy/aliases/candidate", json={"version": 1}), 507, "disk is full")
        spec = (Path(__file__).resolve().parents[2] / "models" / "airline" / "model.yaml").read_bytes()
        assert_problem(
            client.put("/v1/models/other", content=spec, headers={"Content-Type": "application/yaml"}),
            507,
            "disk is full",
        )
        more = b"t,y\n7,5.5\n" + b"".join(f"{i},{i}.5\n".encode() for i in range(8, 20000))
        assert_problem(
            client.post("/v1/datasets/sales/observations", content=more, headers={"Content-Type": "text/csv"}),
            507,
            "disk is full",
        )
        # what was stored before is intact and still served
        assert (registry_dir / "toy" / "aliases.json").read_bytes() == aliases_before
        assert client.post("/v1/models/toy/predict", json={"horizon": 2}).status_code == 200
        assert client.get("/v1/datasets/sales").json()["latest"] == first.json()["latest"]
        assert not list((registry_dir / "toy").glob(".*.tmp"))


# ----------------------------------------------------------------------------- state on disk
@pytest.fixture
def toy_client(tmp_path: Path) -> Iterator[TestClient]:
    from service.registry.store import Registry

    registry = Registry(tmp_path / "models")
    publish_naive(registry, "toy")
    registry.set_alias("toy", "production", 1)
    with TestClient(create_app(make_settings(registry.root, scheduler=False))) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    "content",
    [b"data: [unclosed", b"- just\n- a list\n", b"forecaster: {class: NoSuchForecaster}\n", b"\xff\xfe not utf-8"],
)
def test_an_invalid_model_yaml_on_disk_is_409_naming_the_file(toy_client: TestClient, content: bytes) -> None:
    spec_file = Path(toy_client.app.state.runtime.registry.root) / "toy" / "model.yaml"  # type: ignore[attr-defined]
    spec_file.write_bytes(content)
    retrain = toy_client.post("/v1/models/toy/retrain", json={})
    assert retrain.status_code == 409, retrain.text
    assert "toy/model.yaml" in retrain.json()["detail"]
    assert toy_client.get("/v1/jobs").json()["jobs"] == []
    detail = toy_client.get("/v1/models/toy")
    if content.startswith(b"forecaster"):  # parses: shown as it is
        assert detail.status_code == 200
    else:
        assert detail.status_code == 409 and "toy/model.yaml" in detail.json()["detail"], detail.text
    assert toy_client.get("/v1/models").status_code == 200
    assert toy_client.post("/v1/models/toy/predict", json={"horizon": 2}).status_code == 200


HUGE = 2**64


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", f"/v1/models/toy/versions/{HUGE}", None),
        ("PUT", "/v1/models/toy/aliases/candidate", {"version": HUGE}),
        ("POST", "/v1/models/toy/predict", {"version": HUGE}),
        ("POST", "/v1/models/toy/backtests", {"version": HUGE}),
        ("GET", f"/v1/models/toy/forecast.png?version={HUGE}", None),
    ],
)
def test_version_numbers_beyond_64_bits_are_4xx(toy_client: TestClient, method: str, url: str, body: object) -> None:
    response = toy_client.request(method, url, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


def test_an_infinite_gate_tolerance_is_refused(toy_client: TestClient) -> None:
    body = b'{"gate": {"metric": "MASE", "tolerance": Infinity}}'
    response = toy_client.post("/v1/models/toy/retrain", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert "tolerance" in response.json()["detail"]
    assert json.loads(response.content)  # strict JSON back
