"""Bad predict requests: a 4xx problem+json that says what to fix, never a 500, and the
registry folder untouched (files and aliases.json compared before and after)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import make_settings, wait_ready

PROBLEM_KEYS = {"type", "title", "status", "detail"}
USCHANGE_EXOG = ("income", "production", "savings", "unemployment")


# --------------------------------------------------------------------------- helpers
def _reject_constant(token: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {token} in a response")


def snapshot(root: Path) -> tuple[list[tuple[str, int, int]], dict[str, str]]:
    """Every path under the registry (size, mtime) and every aliases.json's text.
    FileLock's ``.lock`` files are not stored state and are left out."""
    entries = []
    for path in sorted(root.rglob("*")):
        if path.name == ".lock":
            continue
        stat = path.stat()
        entries.append((str(path.relative_to(root)), stat.st_size if path.is_file() else -1, stat.st_mtime_ns))
    aliases = {str(p.relative_to(root)): p.read_text() for p in sorted(root.glob("*/aliases.json"))}
    return entries, aliases


def assert_problem(response: Any, status: int, *, mentions: tuple[str, ...] = (), field: str | None = None) -> dict:
    """An RFC 9457 problem with ``status`` whose text names what is wrong."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = json.loads(response.content, parse_constant=_reject_constant)
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    text = json.dumps(body)
    for word in mentions:
        assert word in text, f"the problem does not mention {word!r}: {body}"
    if field is not None:
        fields = [str(body.get("field", ""))] + [str(e.get("field", "")) for e in body.get("errors", [])]
        assert any(f == field or f.startswith(f"{field}.") for f in fields) or f"'{field}'" in body["detail"], (
            f"the problem does not name the field {field!r}: {body}"
        )
    return body


def exog(start: int, stop: int, **override: list[Any]) -> dict[str, list[Any]]:
    quarters = list(range(start, stop + 1))
    table: dict[str, list[Any]] = {"quarter": quarters}
    for i, column in enumerate(USCHANGE_EXOG):
        table[column] = [0.1 * (i + 1) + 0.01 * k for k in range(len(quarters))]
    table.update(override)
    return table


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """One app on a module-private copy; server errors come back as responses (a 500
    must fail an assertion, not raise inside the test client)."""
    root = tmp_path_factory.mktemp("errors") / "models"
    shutil.copytree(trained_registry_path, root, ignore=shutil.ignore_patterns(".lock"))
    app = create_app(make_settings(root))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, root


@pytest.fixture
def api(served: tuple[TestClient, Path]) -> Iterator[TestClient]:
    """The module's client; the registry must be byte-for-byte the same after the test."""
    client, root = served
    before = snapshot(root)
    yield client
    assert snapshot(root) == before, "a rejected request changed the registry folder"


def post(client: TestClient, name: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return client.post(f"/v1/models/{name}/predict", content=body, headers={"Content-Type": "application/json"})
    return client.post(f"/v1/models/{name}/predict", json=body)


# --------------------------------------------------------------------------- the bad-input table
OBS = "observations"
BAD_INPUT: list[tuple[str, str, Any, int, tuple[str, ...], str | None]] = [
    # id, model, body (dict, or raw bytes), status, words the problem must contain, field
    # ---- unknown things: 404
    ("unknown-model", "no-such-model", {}, 404, ("no-such-model",), None),
    ("unknown-model-odd-name", "Not A Name", {}, 404, (), None),
    ("unknown-version", "airline", {"version": 7}, 404, ("7",), None),
    ("unknown-alias", "airline", {"alias": "staging"}, 404, ("staging",), None),
    ("unknown-series", "tourism-monthly", {"series": ["T999"]}, 404, ("T999",), None),
    ("unknown-series-object", "tourism-monthly", {"series": [{"series": "nope"}]}, 404, ("nope",), None),
    (
        "unknown-hierarchy-node",
        "sales-hierarchy",
        {"series": [["Food preparation", "Fridges"]]},
        404,
        ("Fridges",),
        None,
    ),
    ("unknown-hierarchy-total", "sales-hierarchy", {"series": [["__total", "Hobs"]]}, 404, ("Hobs",), None),
    (
        "observations-unknown-series",
        "tourism-monthly",
        {OBS: {"series": ["T999"], "month": ["2008-01-01"], "visitors": [1.0]}},
        404,
        ("T999",),
        None,
    ),
    # ---- horizon, fh, timestamps: 422 naming the field
    ("horizon-zero", "airline", {"horizon": 0}, 422, (), "horizon"),
    ("horizon-negative", "airline", {"horizon": -3}, 422, (), "horizon"),
    ("horizon-over-max", "airline", {"horizon": 501}, 422, ("500",), "horizon"),
    ("horizon-over-max-live-model", "uschange", {"horizon": 501, "exogenous": exog(187, 188)}, 422, (), "horizon"),
    ("horizon-huge", "airline", b'{"horizon": 4611686018427387904}', 422, (), "horizon"),
    ("horizon-beyond-int64", "airline", b'{"horizon": 99999999999999999999999}', 422, (), "horizon"),
    ("fh-zero", "airline", {"fh": [0, 1]}, 422, (), "fh"),
    ("fh-empty", "airline", {"fh": []}, 422, (), "fh"),
    ("fh-over-max", "airline", {"fh": [1, 501]}, 422, ("500",), "fh"),
    ("fh-beyond-int64", "airline", b'{"fh": [99999999999999999999999]}', 422, (), "fh"),
    ("timestamps-at-cutoff", "airline", {"timestamps": ["1960-12-01"]}, 422, (), "timestamps"),
    ("timestamps-over-max", "airline", {"timestamps": ["2100-01-01"]}, 422, (), "timestamps"),
    ("timestamps-empty", "airline", {"timestamps": []}, 422, (), "timestamps"),
    ("horizon-and-fh", "airline", {"horizon": 2, "fh": [1]}, 422, (), None),
    ("coverage-one", "airline", {"coverage": [1.0]}, 422, (), "coverage"),
    ("coverage-zero", "airline", {"coverage": [0]}, 422, (), "coverage"),
    ("quantile-over-one", "airline", {"quantiles": [1.5]}, 422, (), "quantiles"),
    ("coverage-nan", "airline", b'{"coverage": [NaN]}', 422, (), "coverage"),
    ("version-zero", "airline", {"version": 0}, 422, (), "version"),
    ("series-for-single", "airline", {"series": ["x"]}, 422, (), "series"),
    ("series-empty", "tourism-monthly", {"series": []}, 422, (), "series"),
    ("series-empty-live", "sales-hierarchy", {"series": [], "horizon": 13}, 422, (), "series"),
    ("series-wrong-depth", "sales-hierarchy", {"series": [["Food preparation"]]}, 422, (), "series"),
    (
        "series-object-missing-key",
        "sales-hierarchy",
        {"series": [{"product_line": "Food preparation"}]},
        422,
        (),
        "series",
    ),
    ("series-object-unknown-key", "tourism-monthly", {"series": [{"series": "T001", "store": "x"}]}, 422, (), "series"),
    # ---- wrong types
    ("horizon-string", "airline", {"horizon": "x"}, 422, (), "horizon"),
    ("horizon-float", "airline", {"horizon": 2.0}, 422, (), "horizon"),
    ("horizon-bool", "airline", {"horizon": True}, 422, (), "horizon"),
    ("horizon-inf", "airline", b'{"horizon": 1e999}', 422, (), "horizon"),
    ("fh-float", "airline", {"fh": [1.5]}, 422, (), "fh"),
    ("fh-not-list", "airline", {"fh": 3}, 422, (), "fh"),
    ("series-number", "tourism-monthly", {"series": 5}, 422, (), "series"),
    ("series-item-number", "tourism-monthly", {"series": [1]}, 422, (), "series"),
    ("coverage-string", "airline", {"coverage": "0.8"}, 422, (), "coverage"),
    ("version-string", "airline", {"version": "1"}, 422, (), "version"),
    ("alias-number", "airline", {"alias": 3}, 422, (), "alias"),
    ("timestamps-bool", "airline", {"timestamps": [True]}, 422, (), "timestamps"),
    ("timestamps-int-for-dated-model", "airline", {"timestamps": [5]}, 422, (), "timestamps"),
    (
        "timestamps-str-for-integer-model",
        "uschange",
        {"timestamps": ["188"], "exogenous": exog(187, 188)},
        422,
        (),
        None,
    ),
    ("unknown-field", "airline", {"horizont": 3}, 422, ("horizont",), None),
    ("observations-not-object", "airline", {OBS: [1, 2]}, 422, (), OBS),
    ("observations-column-not-list", "airline", {OBS: {"month": "1961-01-01", "passengers": 1}}, 422, (), OBS),
    ("observations-nested-cell", "airline", {OBS: {"month": [["1961-01-01"]], "passengers": [1]}}, 422, (), OBS),
    (
        "observations-ragged",
        "airline",
        {OBS: {"month": ["1961-01-01", "1961-02-01"], "passengers": [1.0]}},
        422,
        (),
        OBS,
    ),
    (
        "observations-bool-value",
        "airline",
        {OBS: {"month": ["1961-01-01"], "passengers": [True]}},
        422,
        ("passengers",),
        None,
    ),
    (
        "observations-text-value",
        "airline",
        {OBS: {"month": ["1961-01-01"], "passengers": ["many"]}},
        422,
        ("passengers",),
        None,
    ),
    ("observations-missing-target", "airline", {OBS: {"month": ["1961-01-01"]}}, 422, ("passengers",), None),
    ("observations-missing-time", "airline", {OBS: {"passengers": [1.0]}}, 422, ("month",), None),
    ("observations-null-time", "airline", {OBS: {"month": [None], "passengers": [1.0]}}, 422, ("month",), None),
    (
        "observations-null-key",
        "tourism-monthly",
        {OBS: {"series": [None], "month": ["2008-01-01"], "visitors": [1.0]}},
        422,
        ("series",),
        None,
    ),
    # ---- empty
    ("observations-empty-object", "airline", {OBS: {}}, 422, (), OBS),
    ("observations-no-rows", "airline", {OBS: {"month": [], "passengers": []}}, 422, (), OBS),
    ("exogenous-no-rows", "uschange", {"exogenous": {"quarter": [], **{c: [] for c in USCHANGE_EXOG}}}, 422, (), None),
    ("empty-body-needs-exogenous", "uschange", b"", 422, (), None),
    ("empty-object-needs-exogenous", "uschange", {}, 422, USCHANGE_EXOG, "exogenous"),
    ("body-not-json", "airline", b"{", 400, ("JSON",), "body"),  # not JSON at all: 400, not 422
    ("body-array", "airline", b"[]", 422, (), None),
    ("body-null", "airline", b"null", 422, (), None),
    # ---- observations: order, duplicates, continuity
    (
        "observations-duplicated",
        "airline",
        {OBS: {"month": ["1961-01-01", "1961-01-01"], "passengers": [1.0, 2.0]}},
        422,
        ("duplicated",),
        None,
    ),
    (
        "observations-non-monotonic",
        "airline",
        {OBS: {"month": ["1961-02-01", "1961-01-01"], "passengers": [420.0, 410.0]}},
        422,
        (),
        None,
    ),
    (
        "observations-gap",
        "airline",
        {OBS: {"month": ["1961-01-01", "1961-03-01"], "passengers": [1.0, 2.0]}},
        422,
        (),
        None,
    ),
    ("observations-late-start", "airline", {OBS: {"month": ["1961-02-01"], "passengers": [1.0]}}, 422, ("1961",), OBS),
    ("observations-before-cutoff", "airline", {OBS: {"month": ["1960-12-01"], "passengers": [1.0]}}, 422, (), OBS),
    (
        "observations-overlap-cutoff",
        "airline",
        {OBS: {"month": ["1960-12-01", "1961-01-01"], "passengers": [1.0, 2.0]}},
        422,
        (),
        OBS,
    ),
    (
        "observations-one-series-late",
        "tourism-monthly",
        {OBS: {"series": ["T001", "T002"], "month": ["2008-01-01", "2008-02-01"], "visitors": [1.0, 2.0]}},
        422,
        (),
        OBS,
    ),
    (
        "observations-integer-model-late",
        "uschange",
        {
            OBS: {"quarter": [188], "consumption": [0.3], **{c: [0.1] for c in USCHANGE_EXOG}},
            "exogenous": exog(189, 190),
            "horizon": 1,
        },
        422,
        (),
        OBS,
    ),
    # ---- frequency / time format
    ("timestamps-unparseable", "airline", {"timestamps": ["not a date"]}, 422, ("not a date",), None),
    ("timestamps-bad-month", "airline", {"timestamps": ["1961-13-01"]}, 422, (), None),
    (
        "timestamps-daily-for-monthly",
        "airline",
        {"timestamps": ["1961-01-01", "1961-01-02", "1961-01-03"]},
        422,
        (),
        None,
    ),
    ("observations-unparseable-time", "airline", {OBS: {"month": ["yesterday"], "passengers": [1.0]}}, 422, (), None),
    (
        "observations-daily-for-monthly",
        "airline",
        {OBS: {"month": ["1961-01-01", "1961-01-02"], "passengers": [1.0, 2.0]}},
        422,
        (),
        None,
    ),
    (
        "observations-monthly-for-quarterly",
        "macro-var",
        {OBS: {"quarter": ["2009-10-01", "2009-11-01"], "infl": [1, 2], "realint": [1, 2], "unemp": [9, 9]}},
        422,
        (),
        None,
    ),
    ("observations-number-time", "airline", {OBS: {"month": [1961], "passengers": [1.0]}}, 422, (), None),
    (
        "exogenous-fractional-time",
        "uschange",
        {"horizon": 2, "exogenous": exog(187, 188, quarter=[187.5, 188])},
        422,
        ("quarter",),
        None,
    ),
    # ---- NaN, infinities, overflow (raw bytes: a JSON client cannot send them)
    ("observations-nan", "airline", b'{"observations": {"month": ["1961-01-01"], "passengers": [NaN]}}', 422, (), None),
    (
        "observations-1e999",
        "airline",
        b'{"observations": {"month": ["1961-01-01"], "passengers": [1e999]}}',
        422,
        (),
        None,
    ),
    (
        "observations-inf",
        "airline",
        b'{"observations": {"month": ["1961-01-01"], "passengers": [Infinity]}}',
        422,
        (),
        None,
    ),
    (
        "observations-minus-inf",
        "airline",
        b'{"observations": {"month": ["1961-01-01"], "passengers": [-Infinity]}}',
        422,
        (),
        None,
    ),
    (
        "observations-huge-integer",
        "airline",
        b'{"observations": {"month": ["1961-01-01"], "passengers": [1' + b"0" * 400 + b"]}}",
        422,
        ("passengers",),
        None,
    ),
    ("observations-null-value", "airline", {OBS: {"month": ["1961-01-01"], "passengers": [None]}}, 422, (), None),
    (
        "exogenous-nan",
        "uschange",
        b'{"horizon": 1, "exogenous": {"quarter": [187], "income": [NaN], "production": [0.1], '
        b'"savings": [0.1], "unemployment": [0.1]}}',
        422,
        ("income",),
        None,
    ),
    (
        "exogenous-1e999",
        "uschange",
        b'{"horizon": 1, "exogenous": {"quarter": [187], "income": [0.1], "production": [-1e999], '
        b'"savings": [0.1], "unemployment": [0.1]}}',
        422,
        ("production",),
        None,
    ),
    (
        "exogenous-huge-integer",
        "uschange",
        b'{"horizon": 1, "exogenous": {"quarter": [187], "income": [0.1], "production": [0.1], '
        b'"savings": [1' + b"0" * 400 + b'], "unemployment": [0.1]}}',
        422,
        ("savings",),
        None,
    ),
    # ---- exogenous tables
    (
        "exogenous-missing-column",
        "uschange",
        {"horizon": 2, "exogenous": {k: v for k, v in exog(187, 188).items() if k != "unemployment"}},
        422,
        ("unemployment",),
        None,
    ),
    ("exogenous-short", "uschange", {"horizon": 3, "exogenous": exog(187, 188)}, 422, ("189",), "exogenous"),
    ("exogenous-starts-late", "uschange", {"horizon": 2, "exogenous": exog(188, 189)}, 422, ("187",), "exogenous"),
    (
        "exogenous-missing-time",
        "uschange",
        {"horizon": 1, "exogenous": {c: [0.1] for c in USCHANGE_EXOG}},
        422,
        ("quarter",),
        None,
    ),
    (
        "exogenous-duplicated",
        "uschange",
        {"horizon": 2, "exogenous": exog(187, 188, quarter=[187, 187])},
        422,
        (),
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "mentions", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_is_a_4xx_problem(
    api: TestClient, name: str, body: Any, status: int, mentions: tuple[str, ...], field: str | None
) -> None:
    assert_problem(post(api, name, body), status, mentions=mentions, field=field)


def test_the_horizon_limit_itself_is_allowed(api: TestClient) -> None:
    r = post(api, "airline", {"horizon": 500})
    assert r.status_code == 200, r.text
    assert len(r.json()["forecast"]["month"]) == 500
    assert post(api, "airline", {"fh": [500]}).status_code == 200


def test_the_horizon_limit_is_a_setting(trained_registry_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(trained_registry_path, root, ignore=shutil.ignore_patterns(".lock"))
    with TestClient(create_app(make_settings(root, max_horizon=6)), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert post(client, "airline", {"horizon": 6}).status_code == 200
        assert_problem(post(client, "airline", {"horizon": 7}), 422, mentions=("6",), field="horizon")
        assert_problem(post(client, "airline", {"fh": [7]}), 422, field="fh")
        assert_problem(post(client, "airline", {"timestamps": ["1961-07-01"]}), 422, field="timestamps")


def test_partial_panel_observations_do_not_give_wrong_forecasts(api: TestClient) -> None:
    """New actuals for one series of a panel: either a 4xx, or every other series keeps
    the forecast it had for the same months (it got no new data)."""
    before = post(api, "tourism-monthly", {"horizon": 3, "series": ["T002"]})
    assert before.status_code == 200
    body = {
        OBS: {"series": ["T001"], "month": ["2008-01-01"], "visitors": [1000.0]},
        "horizon": 2,
        "series": ["T002"],
    }
    r = post(api, "tourism-monthly", body)
    if 400 <= r.status_code < 500:
        assert_problem(r, r.status_code, mentions=("T002",))
        return
    assert r.status_code == 200, r.text
    old = dict(zip(before.json()["forecast"]["month"], before.json()["forecast"]["visitors"], strict=True))
    new = dict(zip(r.json()["forecast"]["month"], r.json()["forecast"]["visitors"], strict=True))
    for month, value in new.items():
        assert value == pytest.approx(old[month], rel=1e-9), (
            f"T002 got no observations, yet its forecast for {month} moved from {old[month]} to {value}"
        )


def test_partial_hierarchy_observations_are_a_4xx(api: TestClient) -> None:
    """A hierarchy's totals cannot be updated from some leaves only."""
    body = {
        OBS: {"product_line": ["Food preparation"], "product_group": ["Hobs"], "month": ["2005-01-01"], "sales": [1.0]}
    }
    r = post(api, "sales-hierarchy", body)
    assert 400 <= r.status_code < 500, r.text
    assert_problem(r, r.status_code)


def test_observations_for_an_aggregate_node_are_refused(api: TestClient) -> None:
    body = {OBS: {"product_line": ["__total"], "product_group": ["__total"], "month": ["2005-01-01"], "sales": [1.0]}}
    r = post(api, "sales-hierarchy", body)
    assert 400 <= r.status_code < 500, r.text
    assert_problem(r, r.status_code, mentions=("__total",))


# --------------------------------------------------------------------------- capabilities
@pytest.mark.parametrize("name", ["sales-hierarchy"])
@pytest.mark.parametrize("ask", [{"coverage": [0.8]}, {"quantiles": [0.5]}, {"coverage": [0.9], "quantiles": [0.1]}])
def test_no_intervals_from_point_models(api: TestClient, name: str, ask: dict[str, Any]) -> None:
    body = assert_problem(post(api, name, {"horizon": 2, **ask}), 422, mentions=("capability:pred_int",))
    assert body["field"] in ask


@pytest.mark.parametrize("name", ["sales-hierarchy"])
def test_no_intervals_on_the_live_path_either(api: TestClient, name: str) -> None:
    """Beyond the precomputed horizon the answer is the same 422."""
    assert_problem(post(api, name, {"horizon": 20, "coverage": [0.8]}), 422, mentions=("capability:pred_int",))


def test_no_intervals_with_observations(api: TestClient) -> None:
    body = {
        OBS: {"product_line": ["Food preparation"], "product_group": ["Hobs"], "month": ["2005-01-01"], "sales": [1.0]},
        "quantiles": [0.5],
    }
    assert_problem(post(api, "sales-hierarchy", body), 422, mentions=("capability:pred_int",))


def test_tourism_intervals_end_at_their_calibrated_horizon(api: TestClient) -> None:
    """tourism-monthly (intervals: conformal, a global model) is calibrated for its 12 steps:
    intervals beyond them are a 422 naming them, its point forecasts are served."""
    assert_problem(post(api, "tourism-monthly", {"horizon": 20, "coverage": [0.8]}), 422, mentions=("steps 1-12",))
    assert post(api, "tourism-monthly", {"horizon": 20}).status_code == 200


def test_var_quantiles_are_refused_but_intervals_served(api: TestClient) -> None:
    body = assert_problem(post(api, "macro-var", {"horizon": 2, "quantiles": [0.1, 0.9]}), 422, mentions=("quantiles",))
    assert body["detail"]
    assert post(api, "macro-var", {"horizon": 2, "coverage": [0.8]}).status_code == 200


def test_exogenous_model_without_exogenous_names_the_columns(api: TestClient) -> None:
    for body in ({}, {"horizon": 3}, {"fh": [1, 2]}, {"coverage": [0.8]}):
        problem = assert_problem(post(api, "uschange", body), 422, mentions=USCHANGE_EXOG, field="exogenous")
        assert sorted(problem["missing_columns"]) == sorted(USCHANGE_EXOG)


def test_exogenous_missing_one_column_names_it(api: TestClient) -> None:
    for missing in USCHANGE_EXOG:
        table = {k: v for k, v in exog(187, 188).items() if k != missing}
        problem = assert_problem(post(api, "uschange", {"horizon": 2, "exogenous": table}), 422, mentions=(missing,))
        assert problem["missing_columns"] == [missing]


def test_observations_of_an_exogenous_model_need_its_columns(api: TestClient) -> None:
    body = {OBS: {"quarter": [187], "consumption": [0.3]}, "exogenous": exog(188, 189), "horizon": 1}
    assert_problem(post(api, "uschange", body), 422, mentions=("income",))
    body = {OBS: {"quarter": [187], "consumption": [0.3], **{c: [0.1] for c in USCHANGE_EXOG}}, "horizon": 1}
    assert_problem(post(api, "uschange", body), 422, mentions=("exogenous",))


# --------------------------------------------------------------------------- body size
@pytest.fixture(scope="module")
def small_limit(
    trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    root = tmp_path_factory.mktemp("limits") / "models"
    shutil.copytree(trained_registry_path, root, ignore=shutil.ignore_patterns(".lock"))
    app = create_app(make_settings(root, max_body_bytes=2048))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, root


BIG = json.dumps({"fh": list(range(1, 1000))}).encode()  # ~5 kB


def test_body_over_the_limit_is_413(small_limit: tuple[TestClient, Path]) -> None:
    client, root = small_limit
    before = snapshot(root)
    r = client.post("/v1/models/airline/predict", content=BIG, headers={"Content-Type": "application/json"})
    assert_problem(r, 413, mentions=("2048",))
    assert snapshot(root) == before


def test_chunked_body_over_the_limit_is_413(small_limit: tuple[TestClient, Path]) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    client, root = small_limit
    before = snapshot(root)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(BIG), 512):
            yield BIG[start : start + 512]

    request = client.build_request(
        "POST", "/v1/models/airline/predict", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers.get("transfer-encoding") == "chunked"
    r = client.send(request)
    assert_problem(r, 413, mentions=("2048",))
    assert snapshot(root) == before


def test_body_under_the_limit_is_served(small_limit: tuple[TestClient, Path]) -> None:
    client, _ = small_limit
    small = json.dumps({"fh": list(range(1, 200))}).encode()
    assert len(small) < 2048
    r = client.post("/v1/models/airline/predict", content=small, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text

    def chunks() -> Iterator[bytes]:
        yield small[:100]
        yield small[100:]

    r = client.post("/v1/models/airline/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["forecast"]["month"]) == 199


def test_observations_over_the_limit_are_413_before_parsing(small_limit: tuple[TestClient, Path]) -> None:
    client, _ = small_limit
    months = [str(p.start_time.date()) for p in pd.period_range("1961-01", periods=200, freq="M")]
    body = {OBS: {"month": months, "passengers": [400.0] * 200}}
    assert_problem(client.post("/v1/models/airline/predict", json=body), 413)
