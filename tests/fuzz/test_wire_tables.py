"""Property tests of the wire-table parser: any table gives a valid answer or a 4xx.

`service.tables` (wire_to_frame, read_upload, canonical_table) may only raise
`ServiceError` subclasses; through the app, predict (``observations``, ``exogenous``) and
dataset uploads answer with a result or a problem+json 4xx, never a 500.
Raw JSON text is sent so that values Python's JSON cannot produce (``1e400``, integers
beyond int64 and float range) reach the server.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.errors import ServiceError
from service.tables import Schema, canonical_table, read_upload, wire_to_frame
from tests.conftest import make_settings, wait_ready
from tests.integration.conftest import copy_models

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
APP_FUZZ = settings(FUZZ, max_examples=120)

PANEL = Schema(kind="panel", keys=("store",), time="month", targets=("sales",), exogenous=("price",), freq="M")
INTEGER_TIME = Schema(kind="single", keys=(), time="t", targets=("y",), freq=None)
QUARTERLY = Schema(kind="single", keys=(), time="quarter", targets=("gdp", "rate"), freq="Q")
SCHEMAS = [PANEL, INTEGER_TIME, QUARTERLY]
KNOWN_COLUMNS = sorted({c for s in SCHEMAS for c in s.columns})

# ----------------------------------------------------------------------------- values
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**19, 10**30, 10**400, -(10**400)])
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324, -0.0])
times = st.sampled_from(
    [
        "1961-01-01",
        "1961-02-01",
        "1961-01",
        "1960-12-31T23:59:59",
        "1961-01-01T00:00:00+05:00",
        "1961Q1",
        "2000-02-30",
        "99999-01-01",
        "0001-01-01",
        "",
        " ",
        "NaT",
        "nan",
        "2007-13-01",
        "1e400",
        "\x00",
        "\uff11\uff19\uff16\uff11-\uff10\uff11-\uff10\uff11",  # full-width digits
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | huge_ints
    | floats
    | st.text(max_size=10)
    | times
)
cells = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
names = st.sampled_from(KNOWN_COLUMNS) | st.text(max_size=6)
random_tables = st.dictionaries(names, st.lists(cells, max_size=6), max_size=5)


@st.composite
def near_valid_tables(draw: st.DrawFn, schema: Schema) -> dict[str, list[Any]]:
    """The schema's columns (sometimes one missing or one extra), equal lengths, mostly sane values."""
    rows = draw(st.integers(min_value=0, max_value=6))
    columns = list(schema.columns)
    if columns and draw(st.booleans()) and draw(st.booleans()):
        columns.remove(draw(st.sampled_from(columns)))
    if draw(st.booleans()):
        columns.append(draw(names))
    table: dict[str, list[Any]] = {}
    for column in columns:
        if column == schema.time:
            sane = st.integers(min_value=180, max_value=200) if schema.freq is None else times
        elif column in schema.keys:
            sane = st.sampled_from(["a", "b", 1, "__total"])
        else:
            sane = st.floats(min_value=-1e6, max_value=1e6)
        table[column] = draw(st.lists(sane | cells if draw(st.booleans()) else sane, min_size=rows, max_size=rows))
    return table


def raw_json(value: Any) -> str:
    """JSON text; non-finite floats and huge integers spelled as JSON numbers."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "1e400"  # JSON cannot say NaN; an overflowing literal is the closest
        if math.isinf(value):
            return "1e400" if value > 0 else "-1e400"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(raw_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{raw_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


@contextlib.contextmanager
def noted(value: Any) -> Iterator[None]:
    """Name the input on any exception (Hypothesis prints explicit examples' arguments blank)."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"input: {value!r}"[:3000])
        raise


# ----------------------------------------------------------------------------- direct calls
def check_canonical(table: pd.DataFrame, schema: Schema) -> None:
    """What a successful canonical_table promises."""
    for column in [*schema.targets, *schema.exogenous]:
        values = table[column].to_numpy()
        assert values.dtype == np.float64
        assert np.isfinite(values).all()
    order = [*schema.keys, schema.time]
    assert not table.duplicated(subset=order).any()
    for key in schema.keys:
        assert all(isinstance(v, str) for v in table[key])


def parse_and_canonicalise(table: Any) -> None:
    try:
        frame = wire_to_frame(table, "observations")
    except ServiceError:
        return
    assert isinstance(frame, pd.DataFrame)
    for schema in SCHEMAS:
        for contiguous in (True, False):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = canonical_table(frame, schema, what="observations", contiguous=contiguous)
            except ServiceError:
                continue
            check_canonical(result, schema)


@FUZZ
@given(table=random_tables | near_valid_tables(PANEL) | near_valid_tables(INTEGER_TIME) | near_valid_tables(QUARTERLY))
@example(table={"t": [10**30], "y": [1.0]})  # beyond int64 in an integer time column
@example(table={"t": [1e19], "y": [1.0]})  # a float time step beyond int64
@example(table={"quarter": ["1961-01-01T00:00:00+05:00", "1961-04-01"], "gdp": [1.0, 2.0], "rate": [1.0, 2.0]})
@example(table={"t": [1, 2], "y": [10**400, 1.0]})  # an integer beyond float range
@example(table={"t": [1], "y": [float("nan")]})
@example(table={"month": ["1961-01-01"], "store": [None], "sales": [1.0], "price": [1.0]})
@example(table={"quarter": ["1961Q1", ""], "gdp": [1.0, 2.0], "rate": [1.0, 2.0]})
@example(table={})
@example(table={"t": [], "y": []})
@example(table={"t": [1, 2], "y": [1.0]})
@example(table={"t": [[1]], "y": [{"a": 1}]})
def test_wire_tables_parse_or_raise_service_errors(table: dict[str, Any]) -> None:
    with noted(table):
        parse_and_canonicalise(table)


@FUZZ
@given(value=st.none() | scalars | st.lists(cells, max_size=3) | st.dictionaries(names, scalars, max_size=3))
def test_non_table_values_are_refused_as_service_errors(value: Any) -> None:
    with noted(value):
        parse_and_canonicalise(value)


CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "",
        "text/csv",
        "application/csv",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "text/plain",
        "APPLICATION/JSON",
    ]
)


@st.composite
def upload_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "csv", "bytes", "parquet"]))
    if kind == "json":
        return raw_json(draw(random_tables | near_valid_tables(INTEGER_TIME) | near_valid_tables(PANEL))).encode()
    if kind == "csv":
        header = draw(st.lists(names, min_size=1, max_size=4))
        rows = draw(st.lists(st.lists(st.text(max_size=6) | st.just("1e400"), max_size=5), max_size=4))
        text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
        return text.encode("utf-8", errors="surrogatepass")
    if kind == "parquet":
        table = pd.DataFrame({"t": draw(st.lists(st.integers(-5, 5), min_size=1, max_size=4))})
        table["y"] = draw(st.sampled_from([1.0, np.inf, np.nan, "x"]))
        buffer = io.BytesIO()
        table.to_parquet(buffer)
        data = buffer.getvalue()
        cut = draw(st.integers(min_value=0, max_value=len(data)))
        return data if draw(st.booleans()) else data[:cut]
    return draw(st.binary(max_size=64))


@FUZZ
@given(body=upload_bodies(), content_type=CONTENT_TYPES)
@example(body=b'{"t": [1, 2], "y": [1e400, 1]}', content_type="application/json")
@example(body=b'{"t": [100000000000000000000000000000], "y": [1]}', content_type="application/json")
@example(body=b"t,y\n1,1e400\n2,nan\n", content_type="text/csv")
@example(body=b"t,y\n99999999999999999999999,1\n", content_type="text/csv")
@example(body=b"\xff\xfe\x00", content_type="text/csv")
def test_uploads_parse_or_raise_service_errors(body: bytes, content_type: str) -> None:
    with noted((body, content_type)):
        try:
            frame = read_upload(body, content_type)
        except ServiceError:
            return
        for schema in SCHEMAS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = canonical_table(frame, schema, what="dataset")
            except ServiceError:
                continue
            check_canonical(result, schema)


# ----------------------------------------------------------------------------- through the app
@pytest.fixture(scope="module")
def client(trained_registry_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fuzz-tables")
    registry = copy_models(trained_registry_path, root / "models", ["airline", "uschange"])
    with TestClient(create_app(make_settings(registry, scheduler=False))) as test_client:
        wait_ready(test_client)
        yield test_client


AIRLINE = Schema(kind="single", keys=(), time="month", targets=("passengers",), freq="M")
USCHANGE = Schema(
    kind="single",
    keys=(),
    time="quarter",
    targets=("consumption",),
    exogenous=("income", "production", "savings", "unemployment"),
    freq=None,
)


def assert_answer_or_problem(response: Any, body: str) -> None:
    assert response.status_code < 500, f"{response.status_code} for {body[:2000]}: {response.text[:1000]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.headers
        problem = response.json()
        assert problem["status"] == response.status_code and problem["detail"]
    else:
        assert response.status_code == 200
        answer = response.json()
        assert answer["forecast"], answer


def post_predict(client: TestClient, model: str, body: str) -> None:
    with noted(body):
        response = client.post(
            f"/v1/models/{model}/predict", content=body, headers={"content-type": "application/json"}
        )
    assert_answer_or_problem(response, body)


@APP_FUZZ
@given(table=near_valid_tables(AIRLINE) | random_tables, horizon=st.integers(min_value=1, max_value=3))
@example(table={"month": ["1961-01-01"], "passengers": [float("inf")]}, horizon=2)
@example(table={"month": ["1961-01-01"], "passengers": [10**400]}, horizon=2)
@example(table={"month": ["1961-01-01", "1961-02-01"], "passengers": [1e308, -1e308]}, horizon=2)
@example(table={"month": ["99999-01-01"], "passengers": [1.0]}, horizon=2)
@example(table={"month": ["1961-01-01T00:00:00+05:00", "1961-02-01"], "passengers": [1.0, 2.0]}, horizon=1)
def test_predict_with_observations_answers_or_4xx(client: TestClient, table: dict[str, Any], horizon: int) -> None:
    post_predict(client, "airline", f'{{"horizon": {horizon}, "observations": {raw_json(table)}}}')


@APP_FUZZ
@given(
    table=near_valid_tables(USCHANGE) | random_tables,
    observations=st.none() | near_valid_tables(USCHANGE),
)
@example(
    table={
        "quarter": [10**30, 188],
        "income": [0.5, 0.6],
        "production": [0.1, 0.2],
        "savings": [1.0, 1.5],
        "unemployment": [0.0, 0.1],
    },
    observations=None,
)
@example(
    table={
        "quarter": [187, 188],
        "income": [10**400, 0.6],
        "production": [0.1, 0.2],
        "savings": [1.0, 1.5],
        "unemployment": [0.0, 0.1],
    },
    observations=None,
)
def test_predict_with_exogenous_answers_or_4xx(
    client: TestClient, table: dict[str, Any], observations: dict[str, Any] | None
) -> None:
    body = f'{{"horizon": 2, "exogenous": {raw_json(table)}'
    if observations is not None:
        body += f', "observations": {raw_json(observations)}'
    post_predict(client, "uschange", body + "}")


@APP_FUZZ
@given(
    body=upload_bodies(),
    content_type=CONTENT_TYPES,
    roles=st.fixed_dictionaries(
        {},
        optional={
            "time": st.sampled_from(["t", "month", "y"]) | st.text(max_size=3),
            "targets": st.sampled_from(["y", "y,price", "t", ""]) | st.text(max_size=3),
            "keys": st.sampled_from(["store", "y", ""]) | st.text(max_size=3),
            "freq": st.sampled_from(["M", "Q", "D", "2M", "XYZ", ""]) | st.text(max_size=3),
        },
    ),
)
@example(body=b"t,y\n1,1\n2,2\n", content_type="text/csv", roles={"time": "t", "targets": "t"})
@example(body=b"t,y\n1,1\n2,2\n", content_type="text/csv", roles={"time": "t", "targets": "y", "keys": "y"})
@example(body=b"t,y\n1,1\n2,2\n", content_type="text/csv", roles={"time": "t", "targets": "y", "freq": "M"})
@example(body=b'{"t": [1e19], "y": [1]}', content_type="application/json", roles={"time": "t", "targets": "y"})
def test_dataset_uploads_answer_or_4xx(
    client: TestClient, body: bytes, content_type: str, roles: dict[str, str]
) -> None:
    with noted((body, roles)):
        response = client.put(
            "/v1/datasets/fuzzed",
            params=roles,
            content=body,
            headers={"content-type": content_type or "application/json"},
        )
    assert_answer_or_problem_upload(response, body)


def assert_answer_or_problem_upload(response: Any, body: bytes) -> None:
    assert response.status_code < 500, f"{response.status_code} for {body[:500]!r}: {response.text[:1000]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    else:
        assert response.json()["latest"]
