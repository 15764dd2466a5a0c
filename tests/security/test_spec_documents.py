"""Hostile spec documents: YAML alias bombs, deep nesting, tags and the budgets of
`service.documents`, through the real app (PUT /v1/models/{name}) and unit by unit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.documents import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, MAX_NODES, check_budget, load_document
from service.errors import SpecError
from tests.conftest import copy_specs, make_settings, wait_ready

from .conftest import ADMIN_KEY, KEYS

PROBLEM_JSON = "application/problem+json"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
YAML_TYPE = {**ADMIN, "Content-Type": "application/yaml"}
JSON_TYPE = {**ADMIN, "Content-Type": "application/json"}

# "billion laughs": 7 levels of 10 aliases each, 10**7 leaves once expanded
LAUGHS = "\n".join(
    [
        "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdef", "bcdefg", strict=True)),
    ]
)
BOMB_SPEC = LAUGHS + "\n"  # the whole spec is the bomb (unknown top-level keys)


def airline_spec(forecaster: str = "{class: ThetaForecaster, params: {sp: 12}}") -> str:
    return (
        "description: hostile\n"
        "data: {source: {builtin: airline}, time: month, targets: [passengers]}\n"
        "freq: M\n"
        "horizon: 12\n"
        f"forecaster: {forecaster}\n"
    )


def xgb_forecaster(params: str) -> str:
    """A reduction over XGBRegressor, whose **kwargs take any parameter (the bomb's hiding place)."""
    return (
        "{class: make_reduction, params: {window_length: 3, strategy: recursive, "
        f"estimator: {{class: XGBRegressor, params: {params}}}}}}}"
    )


# the bomb inside XGBRegressor's params: anchors defined there, the last level used
XGB_BOMB_SPEC = airline_spec(
    xgb_forecaster(
        "{n_estimators: 5, a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol], "
        + ", ".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdef", "bcdefg", strict=True))
        + "}"
    )
)


def nested_json(depth: int) -> bytes:
    """A valid airline spec whose XGBRegressor params hold a list nested ``depth`` deep."""
    spec = yaml.safe_load(airline_spec(xgb_forecaster("{n_estimators: 5}")))
    text = json.dumps(spec)
    deep = "[" * depth + "]" * depth
    return text.replace('"n_estimators": 5', f'"n_estimators": 5, "deep": {deep}').encode()


def nested_yaml(depth: int) -> bytes:
    return airline_spec(xgb_forecaster("{n_estimators: 5, deep: " + "[" * depth + "]" * depth + "}")).encode()


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    return copy_specs(tmp_path / "models", ["airline"])


@pytest.fixture
def api(app_root: Path) -> Iterator[TestClient]:
    """The app with a read and an admin key, on a registry of the airline spec (not trained)."""
    settings = make_settings(app_root, api_keys=KEYS, scheduler=False, train_missing=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def timed_put(
    client: TestClient, name: str, body: bytes | str, headers: dict[str, str]
) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.put(f"/v1/models/{name}", content=body, headers=headers)
    return response, time.perf_counter() - started


def assert_refused(response: httpx.Response, budget: str) -> dict[str, Any]:
    assert response.status_code == 422, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert len(response.content) < 2048, f"a {len(response.content)}-byte error body"
    body = response.json()
    assert body["budget"] == budget, body
    assert budget in body["detail"], body
    return body


# --------------------------------------------------------------------------- through the app
def test_a_billion_laughs_spec_is_refused_fast_with_a_small_problem(api: TestClient) -> None:
    response, elapsed = timed_put(api, "laughs", BOMB_SPEC, YAML_TYPE)
    assert_refused(response, "MAX_NODES")
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert api.get("/v1/models/laughs", headers=ADMIN).status_code == 404


def test_a_billion_laughs_under_xgbregressor_params_is_refused_and_listings_stay_fast(
    api: TestClient, app_root: Path
) -> None:
    assert len(XGB_BOMB_SPEC) < 1024
    response, elapsed = timed_put(api, "laughs", XGB_BOMB_SPEC, YAML_TYPE)
    assert_refused(response, "MAX_NODES")
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert not (app_root / "laughs" / "model.yaml").exists()
    started = time.perf_counter()
    listing = api.get("/v1/models", headers=ADMIN)
    assert listing.status_code == 200
    assert [m["name"] for m in listing.json()["models"]] == ["airline"]
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("depth", [300, 5000])
@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_deeply_nested_specs_are_refused_and_nothing_is_stored(
    api: TestClient, app_root: Path, kind: str, depth: int
) -> None:
    body, headers = (nested_json(depth), JSON_TYPE) if kind == "json" else (nested_yaml(depth), YAML_TYPE)
    before = api.get("/v1/models/airline", headers=ADMIN).json()["spec"]
    airline_file = (app_root / "airline" / "model.yaml").read_bytes()

    response, elapsed = timed_put(api, "deep", body, headers)
    assert_refused(response, "MAX_DEPTH")
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert api.get("/v1/models/deep", headers=ADMIN).status_code == 404

    assert_refused(api.put("/v1/models/airline", content=body, headers=headers), "MAX_DEPTH")
    after = api.get("/v1/models/airline", headers=ADMIN)
    assert after.status_code == 200 and after.json()["spec"] == before
    assert (app_root / "airline" / "model.yaml").read_bytes() == airline_file


def test_a_spec_with_a_few_anchors_is_stored_as_a_plain_tree(api: TestClient, app_root: Path) -> None:
    """Anchors, aliases and a merge key still work; the stored file has no aliases left."""
    spec = (
        "description: airline, written with anchors\n"
        "data: {source: {builtin: airline}, time: month, targets: [passengers]}\n"
        "freq: M\n"
        "horizon: 12\n"
        "forecaster:\n"
        "  class: TransformedTargetForecaster\n"
        "  params:\n"
        "    steps:\n"
        "      - [deseasonalize, {class: Deseasonalizer, params: &seasonal {sp: 12}}]\n"
        "      - [forecast, {class: ThetaForecaster, params: {<<: *seasonal, deseasonalize: false}}]\n"
        "coverage: &levels [0.8, 0.95]\n"
        "quantiles: *levels\n"
    )
    response = api.put("/v1/models/anchored", content=spec, headers=YAML_TYPE)
    assert response.status_code == 201, response.text
    served = api.get("/v1/models/anchored", headers=ADMIN).json()["spec"]
    assert served["coverage"] == served["quantiles"] == [0.8, 0.95]
    assert served["forecaster"]["params"]["steps"][1][1]["params"] == {"sp": 12, "deseasonalize": False}
    stored = (app_root / "anchored" / "model.yaml").read_text()
    assert "&" not in stored and "*" not in stored, stored  # no shared objects: nothing aliased
    # and the same spec as JSON is still taken
    as_json = api.put("/v1/models/anchored", content=json.dumps(served), headers=JSON_TYPE)
    assert as_json.status_code == 200, as_json.text


# --------------------------------------------------------------------------- load_document
def refused(data: bytes | str, kind: str = "yaml") -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_document(data, kind, "the spec")  # type: ignore[arg-type]
    assert caught.value.detail.startswith("the spec ")
    assert len(caught.value.detail) <= 500
    return caught.value


@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_the_byte_budget(kind: str) -> None:
    error = refused(" " * (MAX_BYTES + 1), kind)
    assert error.extra["budget"] == "MAX_BYTES" and str(MAX_BYTES) in error.detail


@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_the_depth_budget(kind: str) -> None:
    assert load_document("[" * MAX_DEPTH + "]" * MAX_DEPTH, kind) is not None  # at the limit: fine
    for depth in (MAX_DEPTH + 1, 300, 1025, 5000):
        error = refused("[" * depth + "]" * depth, kind)
        assert error.extra == {"budget": "MAX_DEPTH", "limit": MAX_DEPTH}
        assert f"deeper than {MAX_DEPTH}" in error.detail


def test_deep_block_yaml_stops_at_the_depth_counter_not_at_the_recursion_limit() -> None:
    for document in ("- " * 5000 + "x", "a: {" * 5000 + "}" * 5000, "{a: " * 5000 + "1" + "}" * 5000):
        started = time.perf_counter()
        assert refused(document).extra["budget"] == "MAX_DEPTH"
        assert time.perf_counter() - started < 1.0


def test_depth_counts_through_aliases() -> None:
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    assert load_document(f"a: &x {inner}\nb: *x\n", "yaml")["b"] is not None  # 1 + 30 levels
    assert refused(f"a: &x {inner}\nb: [[*x]]\n").extra["budget"] == "MAX_DEPTH"  # 1 + 2 + 30


@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_the_node_budget(kind: str) -> None:
    fits = "[" + ",".join(["1"] * (MAX_NODES - 1)) + "]"  # the list and its items
    assert len(load_document(fits, kind)) == MAX_NODES - 1
    error = refused("[" + ",".join(["1"] * MAX_NODES) + "]", kind)
    assert error.extra == {"budget": "MAX_NODES", "limit": MAX_NODES}


def test_the_node_budget_counts_aliases_expanded_and_a_bomb_costs_milliseconds() -> None:
    started = time.perf_counter()
    assert refused(LAUGHS).extra["budget"] == "MAX_NODES"
    nine_levels = LAUGHS + "\n" + "\n".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in ["gh", "hi"])
    assert refused(nine_levels).extra["budget"] == "MAX_NODES"
    assert time.perf_counter() - started < 0.5
    # 3 levels (1,000 leaves) is within the budget and comes back as separate lists
    small = load_document("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: &b [*a, *a, *a]\nc: [*b, *b]\n", "yaml")
    assert small["c"][0][0] == small["a"] and small["c"][0][0] is not small["a"]
    assert small["c"][0] is not small["c"][1]


def test_the_alias_budget() -> None:
    assert len(load_document("a: &x 1\nb: [" + ", ".join(["*x"] * MAX_ALIASES) + "]\n", "yaml")["b"]) == MAX_ALIASES
    error = refused("a: &x 1\nb: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n")
    assert error.extra == {"budget": "MAX_ALIASES", "limit": MAX_ALIASES}


@pytest.mark.parametrize(
    "document",
    [
        "!!python/object/apply:os.system [echo hi]",
        "a: !!python/name:os.system ''",
        "a: !!binary aGVsbG8=",
        "a: !!set {x, y}",
        "a: !!omap [{x: 1}]",
        "a: !!pairs [{x: 1}]",
        "a: !custom thing",
        "a: !<tag:example.com,2024:spec> {}",
    ],
)
def test_only_plain_yaml_tags(document: str) -> None:
    error = refused(document)
    assert error.extra["budget"] == "tags"
    assert "YAML tag" in error.detail


def test_plain_and_explicit_core_tags_are_fine() -> None:
    value = load_document("a: !!str 12\nb: !!int '3'\nc: ~\nd: [yes, 1.5, 2024-01-31]\n<<: {e: 1}\n", "yaml")
    assert value["a"] == "12" and value["b"] == 3 and value["c"] is None and value["e"] == 1
    assert value["d"][0] is True and str(value["d"][2]) == "2024-01-31"


@pytest.mark.parametrize("document", ["1: x", "yes: x", "~: x", "? [a, b]\n: x", "2024-01-01: x"])
def test_mapping_keys_are_strings(document: str) -> None:
    assert refused(document).extra["budget"] == "keys"


def test_an_alias_inside_its_own_anchor_is_a_cycle() -> None:
    assert refused("a: &a [1, *a]\n").extra["budget"] == "cycle"
    assert refused("a: &a {b: *a}\n").extra["budget"] == "cycle"


@pytest.mark.parametrize(
    ("data", "kind", "mention"),
    [
        ("{", "json", "not valid JSON"),
        (b"\xff\xfe{}", "json", "not valid JSON"),
        ("a: [1, 2", "yaml", "not valid YAML"),
        ("a: *nowhere", "yaml", "not valid YAML"),
        ("a: 1\n---\nb: 2\n", "yaml", "not valid YAML"),
        ("a: &x 1\nb: &x 2\n", "yaml", "not valid YAML"),
        ("a: " + "9" * 5000, "yaml", "not valid YAML"),  # int() refuses 4300+ digits with a ValueError
        ("a: 2024-02-30", "yaml", "not valid YAML"),  # a timestamp that is no date: ValueError
        ("a: [" + "x" * 100_000, "yaml", "not valid YAML"),  # the message is cut short
    ],
)
def test_invalid_documents_are_spec_errors_with_short_messages(data: bytes | str, kind: str, mention: str) -> None:
    assert mention in refused(data, kind).detail


def test_an_empty_yaml_document_is_none() -> None:
    assert load_document("", "yaml") is None
    assert load_document("# only a comment\n", "yaml") is None


# --------------------------------------------------------------------------- check_budget
def test_check_budget_on_shared_references_is_fast_and_counts_them_expanded() -> None:
    laughs: Any = ["lol"] * 10
    for _ in range(8):
        laughs = [laughs] * 10  # 10**9 leaves, 90 objects
    started = time.perf_counter()
    with pytest.raises(SpecError, match="MAX_NODES"):
        check_budget(laughs)
    assert time.perf_counter() - started < 0.1
    shared = [1, 2]
    assert check_budget({"a": shared, "b": shared}) == 1 + 2 * (1 + 3)  # the dict, 2 keys, 2 lists of 2


def test_check_budget_depth_and_cycles() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert check_budget(deep) == MAX_DEPTH
    with pytest.raises(SpecError, match="MAX_DEPTH"):
        check_budget({"x": deep})
    with pytest.raises(SpecError, match="MAX_DEPTH"):
        check_budget([deep] * 2 + [[deep]])  # a shared subtree reached deeper the second time
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SpecError, match="cycle"):
        check_budget(loop)
