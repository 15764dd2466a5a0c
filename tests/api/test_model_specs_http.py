"""Specs against their datasets, the allow-list catalogue, version retention and delete,
publish descriptions/tags and model-list pages, against one real `forecast-service serve`
process (module-scoped) on a registry of its own.

Every bad request is a 4xx problem that changes nothing on disk; the retrains run in the
server's real job workers.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sktime.forecasting.ets import AutoETS
from sktime.forecasting.naive import NaiveForecaster

from service.errors import InvalidInput
from service.forecasting.allowlist import allowed_classes
from service.forecasting.publishing import PublishRequest, publish_version
from service.forecasting.specs import jsonable
from service.registry.store import Registry
from service.tables import Schema, canonical_table, to_sktime
from tests.servers import ServerProcess, pytest_runtest_makereport, running_server  # noqa: F401 - report hook

CSV = {"content-type": "text/csv"}
SINGLE = Schema(kind="single", keys=(), time="month", targets=("y",), freq="M")
JOB_TIMEOUT = 120.0


def shops_csv(n_shops: int = 3, months: int = 36) -> bytes:
    rng = np.random.default_rng(1)
    periods = pd.period_range("2020-01", periods=months, freq="M")
    frames = [
        pd.DataFrame(
            {
                "shop": f"shop{i}",
                "month": [p.start_time.strftime("%Y-%m-%d") for p in periods],
                "sales": 100 + rng.normal(size=months).cumsum(),
            }
        )
        for i in range(n_shops)
    ]
    return pd.concat(frames, ignore_index=True).to_csv(index=False).encode()


def single_table(months: int, seed: int = 0) -> pd.DataFrame:
    periods = pd.period_range("2020-01", periods=months, freq="M")
    y = 50 + np.random.default_rng(seed).normal(size=months).cumsum()
    return canonical_table(pd.DataFrame({"month": periods, "y": y}), SINGLE, what="test data")


def single_csv(months: int) -> bytes:
    frame = single_table(months)
    frame["month"] = [p.start_time.strftime("%Y-%m-%d") for p in frame["month"]]
    return frame.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on an empty registry with three uploaded datasets: 'shops' (3 monthly
    series), 'single' (36 months of one series), 'short' (10 months of one)."""
    root = tmp_path_factory.mktemp("specs-http")
    (root / "models").mkdir()
    for server in running_server(root / "models", root / "server.log", data_dir=root / "data", clean_env=True):
        with server.client(timeout=30.0) as http:
            for name, query, body in (
                ("shops", "time=month&targets=sales&keys=shop&freq=M", shops_csv()),
                ("single", "time=month&targets=y&freq=M", single_csv(36)),
                ("short", "time=month&targets=y&freq=M", single_csv(10)),
            ):
                r = http.put(f"/v1/datasets/{name}?{query}", content=body, headers=CSV)
                assert r.status_code == 200, r.text
        yield server


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=30.0) as client:
        yield client


def registry_of(server: ServerProcess) -> Registry:
    return Registry(server.registry)


def problem(response: httpx.Response, status: int, *mentions: str) -> dict[str, Any]:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:600]}"
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"]
    for word in mentions:
        assert word in json.dumps(body), f"{word!r} not in {body}"
    return body


def shops_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "description": "sales per shop",
        "data": {"source": {"dataset": "shops"}},
        "horizon": 6,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
    }
    spec.update(changes)
    return spec


def wait_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT
    job = http.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    return job


def wait_until(check: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.05)
    return value


# --------------------------------------------------------------------------- specs checked against their dataset
@pytest.mark.parametrize(
    ("changes", "field", "mentions"),
    [
        ({"data": {"source": {"dataset": "shops"}, "targets": ["revenue"]}}, "data.targets", ["'revenue'", "sales"]),
        ({"data": {"source": {"dataset": "shops"}, "keys": ["store"]}}, "data.keys", ["'store'"]),
        ({"data": {"source": {"dataset": "shops"}, "exogenous": ["price"]}}, "data.exogenous", ["'price'"]),
        ({"data": {"source": {"dataset": "shops"}, "keys": []}}, "data.keys", ["leaves out ['shop']"]),
        ({"freq": "D"}, "freq", ["freq D", "whose freq is M"]),
        ({"freq": None}, "freq", ["none (integer steps)", "M"]),
        ({"horizon": 20}, "horizon", ["horizon 20", "at least 40", "has 36"]),
        ({"data": {"source": {"dataset": "short"}}, "horizon": 12}, "horizon", ["at least 24", "has 10"]),
        ({"data": {"source": {"dataset": "nope"}}}, "data.source", ["'nope' does not exist", "upload"]),
        ({"data": {"source": {"dataset": "shops", "version": "0000"}}}, "data.source", ["no version"]),
        ({"forecaster": {"class": "AutoEts"}}, "class", ["did you mean AutoETS"]),
        (
            {"forecaster": {"class": "make_reduction", "params": {"estimator": {"class": "Ridg"}}}},
            "class",
            ["did you mean Ridge"],
        ),
    ],
    ids=[
        "missing-target",
        "missing-key",
        "missing-exogenous",
        "keys-dropped",
        "freq-mismatch",
        "freq-none",
        "short-for-horizon",
        "short-dataset",
        "no-dataset",
        "no-version",
        "did-you-mean",
        "did-you-mean-nested",
    ],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["put", "dry-run"])
def test_a_spec_that_does_not_fit_its_dataset_is_a_422_and_writes_nothing(
    http: httpx.Client, server: ServerProcess, changes: dict[str, Any], field: str, mentions: list[str], dry_run: bool
) -> None:
    r = http.put("/v1/models/misfit", json=shops_spec(**changes), params={"dry_run": "true"} if dry_run else None)
    body = problem(r, 422, *mentions)
    assert body.get("field") == field, body
    assert not (server.registry / "misfit").exists()


def test_a_dataset_spec_takes_its_roles_from_the_dataset_and_dry_run_writes_nothing(
    http: httpx.Client, server: ServerProcess
) -> None:
    path = server.registry / "shops-naive" / "model.yaml"
    r = http.put("/v1/models/shops-naive", json=shops_spec(), params={"dry_run": "true"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["dry_run"] is True and answer["spec"] == shops_spec()
    check = answer["check"]
    assert check["checked"] and check["dataset"] == "shops"
    assert check["roles"] == {"keys": ["shop"], "time": "month", "targets": ["sales"], "exogenous": []}
    assert set(check["from_dataset"]) == {"data.keys", "data.time", "data.targets", "data.exogenous", "freq"}
    assert (check["freq"], check["kind"], check["series"]) == ("M", "panel", 3)
    assert (check["shortest_history"], check["required_history"]) == (36, 12)
    assert not path.parent.exists()

    r = http.put("/v1/models/shops-naive", json=shops_spec())
    assert r.status_code == 201, r.text
    assert r.json()["dry_run"] is False and r.json()["check"]["checked"]
    stored = path.read_bytes()
    # a dry run of another spec over an existing one: checked, the file stays as it was
    r = http.put("/v1/models/shops-naive", json=shops_spec(horizon=3, description="other"), params={"dry_run": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["check"]["required_history"] == 6
    assert path.read_bytes() == stored
    # an override wins over the dataset's role
    r = http.put(
        "/v1/models/shops-naive",
        json=shops_spec(data={"source": {"dataset": "shops"}, "keys": ["shop"], "time": "month"}),
        params={"dry_run": "true"},
    )
    assert r.status_code == 200, r.text
    assert set(r.json()["check"]["from_dataset"]) == {"data.targets", "data.exogenous", "freq"}
    assert path.read_bytes() == stored
    assert http.get("/v1/models/shops-naive").json()["spec"] == shops_spec()


def test_yaml_is_accepted_and_a_builtin_source_is_not_checked(http: httpx.Client, server: ServerProcess) -> None:
    body = "data:\n  source: {builtin: airline}\n  time: month\n  targets: [passengers]\nfreq: M\nhorizon: 12\n"
    body += "forecaster: {class: NaiveForecaster}\n"
    r = http.put("/v1/models/air-yaml?dry_run=true", content=body, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert r.json()["check"]["checked"] is False
    assert not (server.registry / "air-yaml").exists()
    # a builtin source still names its columns itself
    r = http.put(
        "/v1/models/air-yaml?dry_run=true",
        json={"data": {"source": {"builtin": "airline"}}, "forecaster": {"class": "NaiveForecaster"}},
    )
    problem(r, 422, "data.time and data.targets required")


def test_openapi_documents_the_spec_body_with_examples_that_pass_a_dry_run(http: httpx.Client) -> None:
    operation = http.get("/openapi.json").json()["paths"]["/v1/models/{name}"]["put"]
    content = operation["requestBody"]["content"]
    schema = content["application/json"]["schema"]
    assert {"data", "forecaster", "horizon", "coverage", "keep_versions", "promotion"} <= set(schema["properties"])
    assert {"source", "keys", "time", "targets"} <= set(schema["properties"]["data"]["properties"])
    assert "$ref" not in json.dumps(schema)
    assert "application/yaml" in content
    assert any(p["name"] == "dry_run" for p in operation["parameters"])
    examples = content["application/json"]["examples"]
    assert len(examples) >= 3
    for name, example in examples.items():
        r = http.put(f"/v1/models/example-{name}", json=example["value"], params={"dry_run": "true"})
        assert r.status_code == 200, (name, r.text)
    yaml_example = content["application/yaml"]["example"]
    r = http.put(
        "/v1/models/example-yaml?dry_run=true", content=yaml_example, headers={"content-type": "application/yaml"}
    )
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- the allow-list catalogue
def test_forecasters_lists_the_allow_list_with_sktime_parameters_and_tags(http: httpx.Client) -> None:
    started = time.perf_counter()
    r = http.get("/v1/forecasters")
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, r.text
    listing = r.json()
    by_name = {f["name"]: f for f in listing["forecasters"]}
    assert listing["count"] == len(by_name) == len(allowed_classes())
    ets = by_name["AutoETS"]
    assert [p["name"] for p in ets["parameters"]] == AutoETS.get_param_names()
    assert ets["tags"] == jsonable(AutoETS.get_class_tags())
    assert ets["tags"]["capability:pred_int"] is True
    assert (ets["family"], ets["kind"], ets["import_path"]) == (
        "statistical",
        "forecaster",
        "sktime.forecasting.ets.AutoETS",
    )
    assert {p["name"]: p["refused"] for p in ets["parameters"]}["callback"] is True
    assert {p["name"]: p["default"] for p in ets["parameters"]}["sp"] == 1
    assert by_name["make_reduction"]["kind"] == "factory"
    assert by_name["XGBRegressor"]["family"] == "regressors"
    assert "FhPlexForecaster" not in by_name
    assert elapsed < 2.0, f"listing took {elapsed:.2f}s"
    statistical = http.get("/v1/forecasters", params={"family": "statistical"}).json()
    assert {f["family"] for f in statistical["forecasters"]} == {"statistical"}
    assert http.get("/v1/forecasters/AutoETS").json() == ets
    problem(http.get("/v1/forecasters/AutoEts"), 404, "did you mean AutoETS")
    problem(http.get("/v1/forecasters/FhPlexForecaster"), 404, "not in the allow-list")


# --------------------------------------------------------------------------- retrain and what the candidate can serve
def test_a_retrain_asking_for_intervals_the_candidate_cannot_give_says_so_and_does_not_promote(
    http: httpx.Client, server: ServerProcess
) -> None:
    # one series (no per-series workers): the dataset gives time, target and freq
    spec = shops_spec(data={"source": {"dataset": "single"}}, forecaster={"class": "TrendForecaster"}, coverage=[0.9])
    r = http.put("/v1/models/trend", json=spec)
    assert r.status_code == 201, r.text
    assert any("capability:pred_int" in w for w in r.json()["check"]["warnings"])
    started = http.post("/v1/models/trend/retrain", json={})
    assert started.status_code == 202, started.text
    result = wait_job(http, started.json()["id"])["result"]
    assert result["promoted"] is False and result["decision"] == "not promoted"
    assert "coverage [0.9]" in result["reason"] and "not promoted" in result["reason"]
    assert "pred_int" in result["capabilities_missing"]["coverage"]["reason"]
    assert result["capabilities_missing"]["coverage"]["asked"] == [0.9]
    assert http.get("/v1/models/trend").json()["aliases"] == {}
    assert registry_of(server).read_aliases("trend") == {}
    manifest = http.get(f"/v1/models/trend/versions/{result['version']}").json()
    assert (manifest["schema"]["time"], manifest["schema"]["targets"], manifest["freq"]) == ("month", ["y"], "M")
    assert not manifest["capabilities"]["pred_int"]["available"]
    # promote=always promotes, and says what it promoted without
    started = http.post("/v1/models/trend/retrain", json={"promote": "always"})
    assert started.status_code == 202, started.text
    result = wait_job(http, started.json()["id"])["result"]
    assert result["promoted"] is True and "promoted although" in result["reason"], result
    assert result["capabilities_missing"]["coverage"]["asked"] == [0.9]
    assert registry_of(server).read_aliases("trend") == {"production": result["version"]}


# --------------------------------------------------------------------------- delete, retention
def _publish(registry: Registry, name: str, seed: int, **extra: Any) -> int:
    """A naive forecaster on 36 months of one series, published from outside the server."""
    table = single_table(36, seed)
    y, _ = to_sktime(table, SINGLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sktime's remember_data notice
        forecaster = NaiveForecaster(strategy="last").fit(y, fh=[1, 2, 3])
    return publish_version(
        registry, name, forecaster, PublishRequest(training=table, schema=SINGLE, horizon=3, **extra)
    )


def test_delete_a_version_no_alias_points_at(http: httpx.Client, server: ServerProcess) -> None:
    registry = registry_of(server)
    assert [_publish(registry, "gone", seed) for seed in (1, 2, 3)] == [1, 2, 3]
    wait_until(lambda: http.get("/v1/models/gone/versions/3").status_code == 200, "v3 seen")
    r = http.put("/v1/models/gone/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    versions_dir = server.registry / "gone" / "versions"
    before = sorted(p.name for p in versions_dir.iterdir())

    problem(http.delete("/v1/models/gone/versions/1"), 409, "production")
    problem(http.delete("/v1/models/gone/versions/9"), 404)
    problem(http.delete("/v1/models/no-such/versions/1"), 404)
    problem(http.delete("/v1/models/gone/versions/0"), 422)
    assert sorted(p.name for p in versions_dir.iterdir()) == before
    assert (versions_dir / "1" / "manifest.json").is_file()

    # v2 loaded and its answer cached (asked for by number), then deleted: no longer served
    for _ in range(2):
        r = http.post("/v1/models/gone/predict", json={"version": 2, "horizon": 2})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert 2 in http.get("/v1/models/gone").json()["loaded_versions"]
    r = http.delete("/v1/models/gone/versions/2")
    assert r.status_code == 204, r.text
    problem(http.post("/v1/models/gone/predict", json={"version": 2, "horizon": 2}), 404, "no version 2")
    problem(http.get("/v1/models/gone/versions/2"), 404)
    detail = http.get("/v1/models/gone").json()
    assert [v["version"] for v in detail["versions"]] == [1, 3]
    assert 2 not in detail["loaded_versions"]
    assert not (versions_dir / "2" / "artifact.pkl").exists()
    assert http.post("/v1/models/gone/predict", json={"horizon": 2}).json()["version"] == 1
    problem(http.delete("/v1/models/gone/versions/2"), 404)
    # a deleted number is never given out again
    assert _publish(registry, "gone", 4) == 4


def test_keep_versions_prunes_after_a_retrain_but_never_an_aliased_version(
    http: httpx.Client, server: ServerProcess
) -> None:
    registry = registry_of(server)
    spec = {
        "data": {"source": {"dataset": "single"}},
        "horizon": 3,
        "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}},
        "keep_versions": 1,
    }
    r = http.put("/v1/models/kept", json=spec)
    assert r.status_code == 201, r.text
    assert [_publish(registry, "kept", seed) for seed in (1, 2, 3)] == [1, 2, 3]
    wait_until(lambda: http.get("/v1/models/kept/versions/3").status_code == 200, "v3 seen")
    for alias, version in (("production", 1), ("pinned", 2)):
        r = http.put(f"/v1/models/kept/aliases/{alias}", json={"version": version})
        assert r.status_code == 200, r.text
    started = http.post("/v1/models/kept/retrain", json={"promote": "always"})
    assert started.status_code == 202, started.text
    result = wait_job(http, started.json()["id"])["result"]
    assert (result["version"], result["promoted"]) == (4, True)
    assert result["deleted_versions"] == [1, 3]
    assert registry.list_versions("kept") == [2, 4]
    assert http.get("/v1/models/kept").json()["aliases"] == {"pinned": 2, "production": 4}
    problem(http.put("/v1/models/kept", json={**spec, "keep_versions": 0}), 422, "keep_versions")


# --------------------------------------------------------------------------- publish description/tags, pages
def test_publish_description_and_tags_show_in_the_manifest_and_the_list(
    http: httpx.Client, server: ServerProcess
) -> None:
    registry = registry_of(server)
    version = _publish(registry, "tagged", 1, description="naive baseline, Q3", tags=["baseline", "team=ops"])
    registry.set_alias("tagged", "production", version)
    manifest = wait_until(
        lambda: (r := http.get(f"/v1/models/tagged/versions/{version}")).status_code == 200 and r.json(), "published"
    )
    assert (manifest["description"], manifest["tags"]) == ("naive baseline, Q3", ["baseline", "team=ops"])
    listed = {m["name"]: m for m in http.get("/v1/models", params={"limit": 1000}).json()["models"]}
    assert listed["tagged"]["tags"] == ["baseline", "team=ops"]
    assert listed["tagged"]["description"] == "naive baseline, Q3"  # no spec: the version's
    detail = http.get("/v1/models/tagged").json()["versions"][0]
    assert (detail["description"], detail["tags"]) == ("naive baseline, Q3", ["baseline", "team=ops"])
    for bad in (
        {"tags": ["has space"]},
        {"tags": ["x" * 65]},
        {"tags": [f"t{i}" for i in range(33)]},
        {"description": "d" * 2001},
    ):
        with pytest.raises(InvalidInput):
            _publish(registry, "tagged", 2, **bad)
    assert registry.list_versions("tagged") == [version]


def test_model_list_pages(http: httpx.Client, server: ServerProcess) -> None:
    for i in range(5):
        r = http.put(f"/v1/models/page-{i}", json=shops_spec())
        assert r.status_code == 201, r.text
    everything = http.get("/v1/models", params={"limit": 1000}).json()
    assert everything["next_page_token"] is None
    names = [m["name"] for m in everything["models"]]
    assert len(names) >= 5 and names == sorted(names)
    assert [m["name"] for m in http.get("/v1/models").json()["models"]] == names  # default limit 100
    seen: list[str] = []
    token = None
    while True:
        page = http.get("/v1/models", params={"limit": 2, **({"page_token": token} if token else {})}).json()
        assert 1 <= len(page["models"]) <= 2
        seen += [m["name"] for m in page["models"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == names
    for params in ({"limit": 0}, {"limit": 1001}, {"page_token": "not-a-token"}, {"page_token": "e30"}):
        problem(http.get("/v1/models", params=params), 422)
