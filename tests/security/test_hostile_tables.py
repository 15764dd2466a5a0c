"""Hostile tables: wide JSON tables and CSV headers, Parquet bombs and malformed files, times
beyond pandas' range. Each is a 422 that names the limit (and its setting) or the column and
row, decided before the costly work, never a 500; and the event loop keeps answering
(/healthz within 250 ms on a real server; it stalled 22 s before) while such a body is refused."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.api import uploads
from service.app import create_app
from service.forecasting.training import train_and_publish
from service.registry.store import Registry
from tests.conftest import copy_specs, make_settings, wait_ready
from tests.factories import wait_for

from .conftest import ADMIN_KEY, KEYS, READ_KEY, ServerProcess, copy_models

PROBLEM_JSON = "application/problem+json"
CSV = {"content-type": "text/csv"}
JSON = {"content-type": "application/json"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}
AIR = "time=month&targets=passengers&freq=M"
PREDICT = "/v1/models/airline/predict"


# --------------------------------------------------------------------------- helpers
def problem(response: httpx.Response, status: int = 422, *words: str) -> dict[str, Any]:
    """A problem+json with ``status`` whose detail contains ``words``."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    for word in words:
        assert word in body["detail"], f"{word!r} not in {body['detail']!r}"
    return body


def months(start: str, stop: str) -> list[str]:
    return [p.strftime("%Y-%m-01") for p in pd.period_range(start, stop, freq="M")]


def observations(start: str, stop: str, **extra: list[Any]) -> dict[str, list[Any]]:
    times = months(start, stop)
    return {"month": times, "passengers": [420.0] * len(times), **extra}


def wide_observations(columns: int) -> bytes:
    """The outside testers' body: one-row columns after a valid airline observation."""
    table: dict[str, list[Any]] = {"month": ["1961-01-01"], "passengers": [417.0]}
    table.update({f"c{i}": [1] for i in range(columns)})
    return json.dumps({"horizon": 2, "observations": table}).encode()


def wide_csv_header(columns: int) -> bytes:
    return (",".join(f"c{i}" for i in range(columns)) + "\n").encode()


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def parquet_bomb(rows: int = 40_000_000, group: int = 4_000_000) -> bytes:
    """Zeros compress to nothing: 40M rows in ~350 KB (written a row group at a time)."""
    chunk = pa.table({"t": np.zeros(group, dtype="int64"), "y": np.zeros(group)})
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, chunk.schema, compression="zstd") as writer:
        for _ in range(rows // group):
            writer.write_table(chunk)
    return buffer.getvalue()


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def peak_rss(pid: int | str = "self") -> Iterator[dict[str, float]]:
    """Samples a process's RSS every 5 ms; ``growth`` is the peak above the start (MB)."""
    result = {"growth": 0.0}
    start = rss_mb(pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                result["growth"] = max(result["growth"], rss_mb(pid) - start)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def airline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the airline model trained (v1, production); only read by these tests."""
    root = copy_specs(tmp_path_factory.mktemp("hostile") / "models", ["airline"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_and_publish(Registry(root), "airline")
    return root


@contextlib.contextmanager
def app_client(airline: Path, data: Path, **overrides: Any) -> Iterator[TestClient]:
    settings = make_settings(airline, data_dir=data, scheduler=False, access_log=False, **overrides)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(airline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with the default budgets (1000 columns a table, 200k rows, 512 MiB decoded)."""
    with app_client(airline, tmp_path_factory.mktemp("hostile-data")) as test_client:
        yield test_client


@pytest.fixture
def narrow(airline: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The app with 4 columns a table and 1 MB of decoded Parquet."""
    with app_client(airline, tmp_path / "data", max_columns_per_table=4, max_decoded_bytes=1_000_000) as test_client:
        yield test_client


# --------------------------------------------------------------------------- 5: wide predict tables
@pytest.mark.parametrize("table", ["observations", "exogenous"])
def test_a_table_over_the_column_limit_is_422_naming_the_limit(narrow: TestClient, table: str) -> None:
    four = observations("1961-01", "1961-02", a=[1, 1], b=[2, 2])
    five = {**four, "c": [3, 3]}
    if table == "observations":
        assert narrow.post(PREDICT, json={"horizon": 2, table: four}).status_code == 200
    answer = problem(narrow.post(PREDICT, json={"horizon": 2, table: five}), 422, "5 columns", "at most 4")
    assert "FORECAST_MAX_COLUMNS_PER_TABLE" in answer["detail"]
    assert answer["field"] == table and answer["maximum"] == 4


def test_a_large_wide_body_is_refused_before_it_is_parsed(client: TestClient) -> None:
    """4.7 MB of 300k one-row columns: before, 22 s on the event loop and a 200."""
    body = wide_observations(300_000)
    started = time.monotonic()
    answer = problem(client.post(PREDICT, content=body, headers=JSON), 422, "FORECAST_MAX_COLUMNS_PER_TABLE")
    assert time.monotonic() - started < 5
    assert answer["field"] == "body"
    # a large body whose one table is just over the limit is refused naming that table
    table: dict[str, list[Any]] = {"month": ["1961-01-01"] * 20, "passengers": [1.0] * 20}
    table.update({f"c{i}": [1] * 20 for i in range(999)})
    answer = problem(client.post(PREDICT, json={"observations": table}), 422, "1001 columns", "at most 1000")
    assert answer["field"] == "observations"


def test_large_bodies_are_answered_like_small_ones(client: TestClient) -> None:
    """Bodies over 16 KiB are parsed on a worker thread: same answers, same problems."""
    small = client.post(PREDICT, json={"fh": [1, 2, 3]})
    large = client.post(PREDICT, json={"fh": [1, 2, 3] * 3000})
    assert small.status_code == large.status_code == 200, large.text
    assert large.json()["forecast"] == small.json()["forecast"]
    for items in (3, 20_000):  # one error however many bad items (pydantic's fail_fast)
        answer = problem(client.post(PREDICT, json={"fh": ["a"] * items}), 422)
        assert answer["field"] == "fh.0" and len(answer["errors"]) == 1, answer["errors"][:3]
    for raw in (b'{"fh": [1,', b'{"fh": [' + b"1," * 20_000):  # not JSON: a 400, parsed inline or off the loop
        answer = problem(client.post(PREDICT, content=raw, headers=JSON), 400, "not valid JSON")
        assert answer["title"] == "Malformed JSON"
    for body in ({"fh": [1], "junk": 1}, {"fh": [1] * 10_000, "junk": 1}):
        assert problem(client.post(PREDICT, json=body), 422)["field"] == "junk"
    answer = problem(client.post(PREDICT, json={"series": ["x"] * 6000}), 422, "6000 series", "at most 5000")
    assert answer["field"] == "series"


def test_a_large_body_without_a_key_is_refused_before_parsing(
    airline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a large body was parsed for a client without a key")

    with app_client(airline, tmp_path / "data", api_keys=KEYS) as keyed:
        large = json.dumps({"fh": [1, 2, 3] * 3000}).encode()
        with monkeypatch.context() as patch:
            patch.setattr("service.api.routes.predict.parse_body", no_parsing)
            problem(keyed.post(PREDICT, content=large, headers=JSON), 401)
            wrong = {**JSON, "authorization": "Bearer not-a-key-of-this-server"}
            problem(keyed.post(PREDICT, content=large, headers=wrong), 401)
        ok = keyed.post(PREDICT, content=large, headers={**JSON, "authorization": f"Bearer {READ_KEY}"})
        assert ok.status_code == 200, ok.text


# --------------------------------------------------------------------------- 10: times beyond 2262
def test_observations_beyond_2262_are_422_naming_column_and_row(client: TestClient) -> None:
    # 1961-01 .. 2300-01: row 3615 is 2262-04, the first month past pandas' Timestamp range
    answer = problem(client.post(PREDICT, json={"observations": observations("1961-01", "2300-01")}), 422, "2262")
    assert answer["column"] == "month" and answer["row"] == 3615, answer
    # in range, but the forecast would reach past it
    answer = problem(client.post(PREDICT, json={"horizon": 12, "observations": observations("1961-01", "2262-02")}))
    assert answer["field"] == "horizon" and "2262" in answer["detail"]
    answer = problem(client.post(PREDICT, json={"timestamps": ["2300-01-01"]}))
    assert answer["column"] == "timestamps" and answer["row"] == 0, answer


@pytest.mark.parametrize(
    ("body", "headers", "row"),
    [
        pytest.param(b"month,passengers\n2300-01-01,1\n2300-02-01,2\n", CSV, 0, id="csv-2300"),
        pytest.param(b"month,passengers\n1500-01-01,1\n1500-02-01,2\n", CSV, 0, id="csv-1500"),
        pytest.param(json.dumps(observations("2262-01", "2262-06")).encode(), JSON, 3, id="json-2262-04"),
        pytest.param(
            parquet_bytes(
                pa.table(
                    {
                        "month": pa.array([datetime(2261, 12, 1), datetime(2300, 1, 1)], pa.timestamp("ms")),
                        "passengers": [1.0, 2.0],
                    }
                )
            ),
            PARQUET,
            1,
            id="parquet-timestamp-ms",
        ),
    ],
)
def test_uploads_beyond_2262_are_422_naming_column_and_row(
    client: TestClient, body: bytes, headers: dict[str, str], row: int
) -> None:
    answer = problem(client.put(f"/v1/datasets/future?{AIR}", content=body, headers=headers), 422, "2262")
    assert answer["column"] == "month" and answer["row"] == row, answer
    assert client.get("/v1/datasets/future").status_code == 404


def test_an_append_beyond_2262_is_422_and_the_dataset_stays(client: TestClient) -> None:
    start = client.put(
        f"/v1/datasets/edge?{AIR}", content=b"month,passengers\n2262-02-01,1\n2262-03-01,2\n", headers=CSV
    )
    assert start.status_code == 200, start.text
    answer = problem(
        client.post("/v1/datasets/edge/observations", content=b"month,passengers\n2262-04-01,3\n", headers=CSV)
    )
    assert answer["column"] == "month" and answer["row"] == 0
    assert client.get("/v1/datasets/edge").json() == start.json()


# --------------------------------------------------------------------------- 6: wide CSV headers
def test_a_wide_csv_header_is_refused_before_pandas_parses_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100k columns, header only (688 KB): pandas took 74 s over it."""

    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the CSV was parsed although its header is over the column limit")

    monkeypatch.setattr("service.tables.pd.read_csv", no_parsing)
    started = time.monotonic()
    answer = problem(client.put("/v1/datasets/wide?time=c0&targets=c1", content=wide_csv_header(100_000), headers=CSV))
    assert time.monotonic() - started < 5
    assert "100000 columns" in answer["detail"] and "FORECAST_MAX_COLUMNS_PER_TABLE" in answer["detail"]
    assert answer["maximum"] == 1000
    # neither a quoted newline nor a quote inside a field (data, for pandas) hides the rest
    for hidden in (b'"a\nb",' + wide_csv_header(5000), b'a"b,' + wide_csv_header(5000)):
        problem(client.put("/v1/datasets/wide?time=c0&targets=c1", content=hidden, headers=CSV), 422, "5001 columns")
    problem(client.get("/v1/datasets/wide"), 404)


@pytest.mark.parametrize(
    ("header", "extra", "status"),
    [
        pytest.param(b"month,passengers,a,b", 2, 200, id="four"),
        pytest.param(b"month,passengers,a,b,c", 3, 422, id="five"),
        pytest.param(b'month,passengers,"a,b,c",d', 2, 200, id="quoted-commas"),
        pytest.param(b'month,passengers,"say ""a,b""",c', 2, 200, id="doubled-quotes"),
        pytest.param(b'\r\n\nmonth,passengers,"a\nb",c,"d"', 3, 422, id="blank-lines-and-a-quoted-newline"),
    ],
)
def test_csv_header_fields_are_counted_as_pandas_reads_them(
    narrow: TestClient, header: bytes, extra: int, status: int
) -> None:
    rows = "".join(f"\n{m},{i}" + ",1" * extra for i, m in enumerate(months("1960-01", "1960-03")))
    response = narrow.put(f"/v1/datasets/narrow?{AIR}", content=header + rows.encode(), headers=CSV)
    assert response.status_code == status, response.text
    if status == 422:
        problem(response, 422, f"{extra + 2} columns", "at most 4", "FORECAST_MAX_COLUMNS_PER_TABLE")


def test_wide_json_and_parquet_uploads_are_422(narrow: TestClient) -> None:
    table = {**observations("1960-01", "1960-03"), **{c: [1, 2, 3] for c in "abc"}}
    problem(narrow.put(f"/v1/datasets/w?{AIR}", content=json.dumps(table).encode(), headers=JSON), 422, "at most 4")
    problem(
        narrow.put(f"/v1/datasets/w?{AIR}", content=parquet_bytes(pa.table(table)), headers=PARQUET), 422, "5 columns"
    )
    nested = {"month": [[1]] * 6, "passengers": [{"a": 1}] * 6}  # two columns, but a dozen nested values
    problem(narrow.put(f"/v1/datasets/w?{AIR}", content=json.dumps(nested).encode(), headers=JSON), 422)
    problem(narrow.get("/v1/datasets/w"), 404)


# --------------------------------------------------------------------------- 7: Parquet
def test_a_parquet_bomb_is_refused_from_its_footer(client: TestClient) -> None:
    """40M rows in ~350 KB: before, decoded first (1.3 GB, 2.8 s), refused after."""
    bomb = parquet_bomb()
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    with peak_rss() as memory:
        response = client.put("/v1/datasets/bomb?time=t&targets=y", content=bomb, headers=PARQUET)
    answer = problem(response, 422, "40000000 rows", "FORECAST_MAX_UPLOAD_ROWS")
    assert time.monotonic() - started < 2
    assert memory["growth"] < 100, f"RSS grew {memory['growth']:.0f} MB"
    assert answer["maximum"] == 12_000_000  # FORECAST_MAX_UPLOAD_ROWS


def test_parquet_over_the_decoded_size_is_refused(narrow: TestClient) -> None:
    """200k rows of two float columns (3.2 MB decoded) against 1 MB: refused from the footer."""
    times = pd.period_range("1700-01", periods=200_000, freq="D").start_time
    table = pa.table({"month": times.values, "passengers": np.ones(200_000)})
    answer = problem(
        narrow.put(
            f"/v1/datasets/big?{AIR.replace('freq=M', 'freq=D')}", content=parquet_bytes(table), headers=PARQUET
        ),
        422,
        "FORECAST_MAX_DECODED_BYTES",
    )
    assert answer["maximum"] == 1_000_000


def test_parquet_whose_footer_understates_its_size_is_refused_while_decoding(narrow: TestClient) -> None:
    """2000 identical 1000-character strings: ~20 KB on the wire and in the footer's sizes,
    2 MB decoded; counted batch by batch, refused past 1 MB."""
    days = pd.period_range("1700-01-01", periods=2000, freq="D").start_time.values
    table = pa.table({"month": days, "passengers": np.ones(2000), "note": ["x" * 1000] * 2000})
    body = parquet_bytes(table, compression="zstd")
    assert len(body) < 100_000
    response = narrow.put(f"/v1/datasets/notes?{AIR.replace('freq=M', 'freq=D')}", content=body, headers=PARQUET)
    problem(response, 422, "FORECAST_MAX_DECODED_BYTES")


def _valid_parquet(**metadata: bytes) -> bytes:
    table = pa.table({"month": months("1960-01", "1960-03"), "passengers": [1.0, 2.0, 3.0]})
    return parquet_bytes(table.replace_schema_metadata(metadata or None))


GOOD_PARQUET = _valid_parquet()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"PAR1\0\0\0\0PAR1", id="empty-footer"),
        pytest.param(b"PAR1" + b"\xff" * 64 + b"\x10\0\0\0PAR1", id="garbage-footer"),
        pytest.param(GOOD_PARQUET[:-12] + GOOD_PARQUET[-8:], id="footer-cut"),
        pytest.param(GOOD_PARQUET[: len(GOOD_PARQUET) // 2], id="truncated"),
        pytest.param(b"PAR1", id="magic-only"),
    ],
)
def test_malformed_parquet_is_422_cannot_be_read(client: TestClient, body: bytes) -> None:
    answer = problem(
        client.put(f"/v1/datasets/broken?{AIR}", content=body, headers=PARQUET), 422, "cannot be read as Parquet"
    )
    assert answer["title"] == "Invalid table"


@pytest.mark.parametrize(
    "pandas_metadata",
    [
        pytest.param(b'{"index_columns": ["nope"], "columns": [{"name": 3}]}', id="unknown-index"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"index_columns": [{"kind": "range", "start": 0, "stop": "x"}]}', id="bad-range"),
    ],
)
def test_broken_pandas_metadata_is_ignored(client: TestClient, pandas_metadata: bytes) -> None:
    body = _valid_parquet(pandas=pandas_metadata)
    response = client.put(f"/v1/datasets/meta?{AIR}", content=body, headers=PARQUET)
    assert response.status_code == 200, response.text
    assert response.json()["versions"][-1]["rows"] == 3


# --------------------------------------------------------------------------- 6: the ingest pool
def test_uploads_run_on_a_bounded_ingest_pool(airline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ingest thread: one upload parses, one waits, the next is a 503 with Retry-After;
    live predicts keep their own threads meanwhile."""
    release = threading.Event()
    threads: list[str] = []
    real_upload = uploads.upload

    def held_upload(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        release.wait(30)
        return real_upload(*args)

    monkeypatch.setattr(uploads, "upload", held_upload)
    body = "month,passengers\n" + "".join(f"{m},{i}\n" for i, m in enumerate(months("1960-01", "1960-06")))
    statuses: list[httpx.Response] = []
    with app_client(airline, tmp_path / "data", ingest_threads=1, live_predict_threads=1) as app:

        def put(name: str) -> None:
            statuses.append(app.put(f"/v1/datasets/{name}?{AIR}", content=body.encode(), headers=CSV))

        senders = [threading.Thread(target=put, args=(f"d{i}",)) for i in range(3)]
        try:
            for sender in senders:
                sender.start()
            wait_for(lambda: len(statuses) == 1 and len(threads) == 1, 10, "one upload refused, one parsing")
            refused = problem(statuses[0], 503, "FORECAST_INGEST_THREADS")
            assert statuses[0].headers["retry-after"] == "2", refused
            # the live-predict thread is free although uploads are parsing
            live = app.post(PREDICT, json={"horizon": 2, "observations": observations("1961-01", "1961-02")})
            assert live.status_code == 200, live.text
        finally:
            release.set()
            for sender in senders:
                sender.join(30)
        assert sorted(r.status_code for r in statuses) == [200, 200, 503]
        assert threads and all(name.startswith("ingest") for name in threads), threads


# --------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(airline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hostile-server")
    process = ServerProcess(
        copy_models(airline, root / "models", ["airline"]),
        root / "server.log",
        FORECAST_API_KEYS=KEYS,
        FORECAST_DATA_DIR=str(root / "data"),
        FORECAST_SCHEDULER="false",
        FORECAST_ACCESS_LOG="false",
    ).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


HOSTILE = {
    "wide-observations": ("POST", PREDICT, READ_KEY, "application/json", lambda: wide_observations(300_000)),
    "wide-csv": (
        "PUT",
        "/v1/datasets/wide?time=c0&targets=c1",
        ADMIN_KEY,
        "text/csv",
        lambda: wide_csv_header(100_000),
    ),
    "parquet-bomb": ("PUT", "/v1/datasets/bomb?time=t&targets=y", ADMIN_KEY, PARQUET["content-type"], parquet_bomb),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE))
def test_healthz_answers_within_250ms_while_a_hostile_body_is_refused(
    server: ServerProcess, case: str, tmp_path: Path
) -> None:
    """The hostile body is sent from a process of its own, so the /healthz timings here
    measure the server, not this process's GIL busy building the hostile request."""
    method, path, key, content_type, make = HOSTILE[case]
    body_file = tmp_path / "body"
    body_file.write_bytes(make())
    assert server.process is not None
    sender_code = (
        "import json, sys, time, httpx\n"
        "body = open(sys.argv[1], 'rb').read()\n"
        "started = time.monotonic()\n"
        "with httpx.Client(base_url=sys.argv[2], timeout=60) as http:\n"
        "    r = http.request(sys.argv[3], sys.argv[4], content=body,\n"
        "                     headers={'content-type': sys.argv[5], 'authorization': 'Bearer ' + sys.argv[6]})\n"
        "print(json.dumps({'status': r.status_code, 'type': r.headers.get('content-type'), 'body': r.text[:2000],\n"
        "                  'seconds': time.monotonic() - started}))\n"
    )
    latencies: list[float] = []
    with server.client() as health, peak_rss(server.process.pid) as memory:
        assert health.get("/healthz").status_code == 200  # the connection is open before timing
        sender = subprocess.Popen(
            [sys.executable, "-c", sender_code, str(body_file), server.base_url, method, path, content_type, key],
            stdout=subprocess.PIPE,
            text=True,
        )
        while sender.poll() is None or not latencies:
            started = time.monotonic()
            assert health.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.005)
        out, _ = sender.communicate(timeout=60)
    answer = json.loads(out)
    assert answer["status"] == 422, answer
    assert answer["type"].startswith("application/problem+json"), answer
    assert answer["seconds"] < 5, f"the hostile request took {answer['seconds']:.1f}s"
    assert max(latencies) < 0.25, f"/healthz took up to {max(latencies) * 1000:.0f} ms ({len(latencies)} polls)"
    assert memory["growth"] < 150, f"server RSS grew {memory['growth']:.0f} MB"
