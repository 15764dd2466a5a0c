"""Datasets over HTTP: uploads (CSV, JSON table, Parquet), appends, list and describe;
every bad upload is a 422 (413 over the size limit) that names the rows or columns to fix
and leaves the stored dataset byte for byte as it was."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sktime.datasets import load_airline

from service.app import create_app
from tests.conftest import make_settings, wait_ready

CSV = {"content-type": "text/csv"}
JSON = {"content-type": "application/json"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}
AIR_ROLES = "time=month&targets=passengers&freq=M"


def airline_frame() -> pd.DataFrame:
    y = load_airline()
    return pd.DataFrame(
        {"month": [p.start_time.strftime("%Y-%m-%d") for p in y.index], "passengers": y.to_numpy(dtype=float)}
    )


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def panel_frame() -> pd.DataFrame:
    months = pd.period_range("2022-01", periods=18, freq="M")
    rows = [
        {"region": region, "store": f"{region}{i}", "month": m.strftime("%Y-%m"), "sales": 10.0 * i + j, "price": 2.0}
        for region in ("n", "s")
        for i in range(2)
        for j, m in enumerate(months)
    ]
    return pd.DataFrame(rows)


def data_dir(client: TestClient) -> Path:
    return Path(client.app.state.runtime.settings.data_dir)  # type: ignore[attr-defined]


def files_of(client: TestClient, name: str) -> dict[str, bytes]:
    """dataset.json and every version file of a dataset, by relative path (the lock file aside)."""
    root = data_dir(client).resolve() / "datasets" / name
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The app on an empty registry with its own data folder."""
    registry = tmp_path / "models"
    registry.mkdir()
    with TestClient(create_app(make_settings(registry))) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def air(client: TestClient) -> dict[str, Any]:
    """Dataset 'air': the airline data without its last 12 months, uploaded as CSV."""
    response = client.put(f"/v1/datasets/air?{AIR_ROLES}", content=to_csv(airline_frame().iloc[:-12]), headers=CSV)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------ uploads


def test_csv_upload_creates_a_described_version(client: TestClient, air: dict[str, Any]) -> None:
    assert air["name"] == "air"
    assert air["roles"] == {"keys": [], "time": "month", "targets": ["passengers"], "exogenous": [], "freq": "M"}
    (version,) = air["versions"]
    assert air["latest"] == version["version"]
    assert version["rows"] == 132 and version["series"] == 1
    assert version["start"] == "1949-01-01" and version["end"] == "1959-12-01"
    assert version["columns"] == ["month", "passengers"]
    assert client.get("/v1/datasets/air").json() == air
    stored = data_dir(client) / "datasets" / "air" / "versions" / f"{air['latest']}.parquet"
    assert stored.is_file()
    assert pd.read_parquet(stored)["passengers"].tolist() == airline_frame()["passengers"].iloc[:-12].tolist()


def test_json_and_parquet_bodies_give_the_same_version_as_csv(client: TestClient, air: dict[str, Any]) -> None:
    frame = airline_frame().iloc[:-12]
    as_json = client.put(f"/v1/datasets/air-json?{AIR_ROLES}", content=json.dumps(frame.to_dict("list")), headers=JSON)
    assert as_json.status_code == 200, as_json.text
    parquet = io.BytesIO()
    frame.assign(month=pd.to_datetime(frame["month"])).to_parquet(parquet, index=False)
    as_parquet = client.put(f"/v1/datasets/air-parquet?{AIR_ROLES}", content=parquet.getvalue(), headers=PARQUET)
    assert as_parquet.status_code == 200, as_parquet.text
    # a version is the hash of the canonical table, whatever the wire format
    assert as_json.json()["latest"] == as_parquet.json()["latest"] == air["latest"]
    # re-uploading the same content to the same dataset keeps one version
    again = client.put(f"/v1/datasets/air?{AIR_ROLES}", content=to_csv(frame.iloc[::-1]), headers=CSV)
    assert again.status_code == 200
    assert [v["version"] for v in again.json()["versions"]] == [air["latest"]]
    # an existing dataset keeps its roles: no query needed for a new upload
    changed = frame.copy()
    changed.loc[0, "passengers"] = 113.0
    newer = client.put("/v1/datasets/air", content=to_csv(changed), headers=CSV)
    assert newer.status_code == 200, newer.text
    assert newer.json()["latest"] != air["latest"]
    assert [v["version"] for v in newer.json()["versions"]] == [air["latest"], newer.json()["latest"]]


def test_panel_upload_with_keys_and_exogenous(client: TestClient) -> None:
    response = client.put(
        "/v1/datasets/stores?time=month&targets=sales&keys=region,store&exogenous=price&freq=M",
        content=to_csv(panel_frame()),
        headers=CSV,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["roles"]["keys"] == ["region", "store"] and body["roles"]["exogenous"] == ["price"]
    (version,) = body["versions"]
    assert version["series"] == 4 and version["rows"] == 72
    assert version["start"] == "2022-01-01" and version["end"] == "2023-06-01"
    assert version["columns"] == ["region", "store", "month", "sales", "price"]


def test_roles_from_a_model_spec(client: TestClient) -> None:
    spec = {
        "data": {"source": {"dataset": "sales"}, "keys": ["region", "store"], "time": "month", "targets": ["sales"]},
        "freq": "M",
        "horizon": 6,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
    }
    assert client.put("/v1/models/shops", json=spec).status_code == 201
    by_model = client.put("/v1/datasets/shops-data?model=shops", content=to_csv(panel_frame()), headers=CSV)
    assert by_model.status_code == 200, by_model.text
    assert by_model.json()["roles"] == {
        "keys": ["region", "store"],
        "time": "month",
        "targets": ["sales"],
        "exogenous": [],
        "freq": "M",
    }
    # a new dataset that a spec names as its source takes that spec's roles without a query
    implicit = client.put("/v1/datasets/sales", content=to_csv(panel_frame()), headers=CSV)
    assert implicit.status_code == 200, implicit.text
    assert implicit.json()["roles"] == by_model.json()["roles"]
    # ?model= of a model that does not exist
    problem(client.put("/v1/datasets/other?model=ghost", content=to_csv(panel_frame()), headers=CSV), 404)


# ------------------------------------------------------------------ appends, list, describe


def test_append_upserts_and_makes_a_new_version(client: TestClient, air: dict[str, Any]) -> None:
    last12 = airline_frame().iloc[-12:]
    response = client.post("/v1/datasets/air/observations", content=to_csv(last12), headers=CSV)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["latest"] != air["latest"]
    assert [v["version"] for v in body["versions"]] == [air["latest"], body["latest"]]
    assert body["versions"][-1]["rows"] == 144 and body["versions"][-1]["end"] == "1960-12-01"
    # the whole airline series uploaded at once is the same content: the same version
    whole = client.put("/v1/datasets/whole?" + AIR_ROLES, content=to_csv(airline_frame()), headers=CSV)
    assert whole.json()["latest"] == body["latest"]

    # same key+time replaces (JSON body this time): one row changes, none is added
    fix = {"month": ["1960-12-01"], "passengers": [433.0]}
    fixed = client.post("/v1/datasets/air/observations", content=json.dumps(fix), headers=JSON).json()
    assert fixed["versions"][-1]["rows"] == 144
    assert fixed["latest"] not in {air["latest"], body["latest"]}
    stored = pd.read_parquet(data_dir(client) / "datasets" / "air" / "versions" / f"{fixed['latest']}.parquet")
    assert stored["passengers"].iloc[-1] == 433.0
    assert stored["passengers"].iloc[-2] == airline_frame()["passengers"].iloc[-2]


def test_list_and_describe(client: TestClient, air: dict[str, Any]) -> None:
    assert client.get("/v1/datasets").json() == {"datasets": [air], "next_page_token": None}
    client.put(
        "/v1/datasets/stores?time=month&targets=sales&keys=region,store&freq=M",
        content=to_csv(panel_frame()),
        headers=CSV,
    )
    listed = client.get("/v1/datasets").json()["datasets"]
    assert [d["name"] for d in listed] == ["air", "stores"]
    described = client.get("/v1/datasets/stores").json()
    assert described == listed[1]
    assert described["versions"][0]["series"] == 4
    problem(client.get("/v1/datasets/nothing"), 404)


# ------------------------------------------------------------------ bad uploads


def bad_bodies() -> list[Any]:
    base = airline_frame().iloc[:-12]
    duplicated = pd.concat([base, base.iloc[[10]]], ignore_index=True)
    bad_time = base.copy()
    bad_time.loc[20, "month"] = "the 5th of never"
    gap = base.drop(index=40)
    text = base.copy().astype({"passengers": object})
    text.loc[7, "passengers"] = "many"
    missing = base.copy()
    missing.loc[9, "passengers"] = float("nan")
    nan_json = base.to_dict("list")
    nan_json["passengers"][11] = None
    return [
        pytest.param(to_csv(duplicated), CSV, {"rows": [10, 132], "columns": ["month"]}, "duplicated", id="duplicate"),
        pytest.param(to_csv(bad_time), CSV, {"column": "month", "row": 20}, "row 20", id="unparseable-time"),
        pytest.param(to_csv(gap), CSV, {"column": "month", "row": 40}, "not regular", id="gap"),
        pytest.param(to_csv(text), CSV, {"column": "passengers", "row": 7}, "numeric", id="non-numeric"),
        pytest.param(to_csv(missing), CSV, {"column": "passengers", "row": 9}, "NaN", id="nan-csv"),
        pytest.param(json.dumps(nan_json).encode(), JSON, {"column": "passengers", "row": 11}, "NaN", id="null-json"),
        pytest.param(
            to_csv(base.rename(columns={"passengers": "pax"})),
            CSV,
            {"columns": ["passengers"]},
            "missing",
            id="no-target",
        ),
        pytest.param(
            to_csv(base),
            {"content-type": "application/x-excel"},
            {"field": "content-type"},
            "content type",
            id="content-type",
        ),
        pytest.param(b"", CSV, {}, "empty", id="empty"),
        pytest.param(b"month,passengers\n", CSV, {}, "no rows", id="header-only"),
        pytest.param(b"\x00\x01 not parquet", PARQUET, {}, "cannot be read", id="broken-parquet"),
        pytest.param(b"{not json", JSON, {}, "cannot be read", id="broken-json"),
    ]


@pytest.mark.parametrize(("body", "headers", "fields", "words"), bad_bodies())
def test_bad_upload_is_422_and_the_dataset_stays(
    client: TestClient, air: dict[str, Any], body: bytes, headers: dict[str, str], fields: dict[str, Any], words: str
) -> None:
    before = files_of(client, "air")
    answer = problem(client.put("/v1/datasets/air", content=body, headers=headers))
    assert words in answer["detail"]
    for field, value in fields.items():
        assert answer.get(field) == value, answer
    assert files_of(client, "air") == before
    assert client.get("/v1/datasets/air").json() == air


@pytest.mark.parametrize(
    ("body", "fields", "words"),
    [
        pytest.param(
            "month,passengers\n1960-01-01,417\n1960-01-01,418\n", {"columns": ["month"]}, "duplicated", id="dup"
        ),
        pytest.param("month,passengers\n1960-03-01,417\n", {"column": "month"}, "not regular", id="gap"),
        pytest.param("month,passengers\n1960-01-01,lots\n", {"column": "passengers", "row": 0}, "numeric", id="text"),
        pytest.param("month,passengers\n1960-01-01,\n", {"column": "passengers", "row": 0}, "NaN", id="nan"),
        pytest.param("month,passengers\nsometime,417\n", {"column": "month", "row": 0}, "row 0", id="bad-time"),
        pytest.param("", {}, "empty", id="empty"),
    ],
)
def test_bad_append_is_422_and_the_dataset_stays(
    client: TestClient, air: dict[str, Any], body: str, fields: dict[str, Any], words: str
) -> None:
    before = files_of(client, "air")
    answer = problem(client.post("/v1/datasets/air/observations", content=body.encode(), headers=CSV))
    assert words in answer["detail"]
    for field, value in fields.items():
        assert answer.get(field) == value, answer
    assert files_of(client, "air") == before


def test_new_dataset_without_roles_is_422_and_nothing_is_stored(client: TestClient) -> None:
    answer = problem(client.put("/v1/datasets/fresh", content=to_csv(airline_frame()), headers=CSV))
    assert "time" in answer["detail"] and "model" in answer["detail"]
    problem(client.put("/v1/datasets/fresh?time=month", content=to_csv(airline_frame()), headers=CSV))
    problem(
        client.put(
            "/v1/datasets/fresh?time=month&targets=passengers&freq=fortnightly",
            content=to_csv(airline_frame()),
            headers=CSV,
        )
    )
    problem(client.get("/v1/datasets/fresh"), 404)
    assert client.get("/v1/datasets").json() == {"datasets": [], "next_page_token": None}
    assert not (data_dir(client) / "datasets" / "fresh" / "dataset.json").exists()


def test_append_to_an_unknown_dataset_is_404(client: TestClient) -> None:
    answer = problem(client.post("/v1/datasets/ghost/observations", content=to_csv(airline_frame()), headers=CSV), 404)
    assert "ghost" in answer["detail"]
    assert client.get("/v1/datasets").json() == {"datasets": [], "next_page_token": None}


def test_invalid_dataset_name_is_422(client: TestClient) -> None:
    problem(client.put(f"/v1/datasets/Bad%20Name?{AIR_ROLES}", content=to_csv(airline_frame()), headers=CSV))


def test_body_over_the_upload_limit_is_413_and_the_dataset_stays(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    small = airline_frame().iloc[:24]
    with TestClient(create_app(make_settings(registry, max_upload_bytes=4096))) as client:
        wait_ready(client)
        assert client.put(f"/v1/datasets/air?{AIR_ROLES}", content=to_csv(small), headers=CSV).status_code == 200
        before = files_of(client, "air")
        big = to_csv(airline_frame().assign(note="an extra column that makes the body bigger"))
        assert len(big) > 4096
        answer = problem(client.put("/v1/datasets/air", content=big, headers=CSV), 413)
        assert answer["limit"] == 4096
        problem(client.post("/v1/datasets/air/observations", content=big, headers=CSV), 413)
        assert files_of(client, "air") == before


def test_too_many_rows_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    with TestClient(create_app(make_settings(registry, max_upload_rows=100))) as client:
        wait_ready(client)
        answer = problem(client.put(f"/v1/datasets/air?{AIR_ROLES}", content=to_csv(airline_frame()), headers=CSV))
        assert "more than 100 rows" in answer["detail"]  # read no further than the limit
        problem(client.get("/v1/datasets/air"), 404)
