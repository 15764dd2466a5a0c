"""Read-your-writes against real servers (issue "A user's first day", item 2): a retrain
with promotion `always`, its job polled until `succeeded`, then predict at once. The
server that reported `succeeded` already answers with the promoted version (never the
previous one, never a 404 for a new model); another replica on the same registry and
job store converges within one poll interval, and never 404s on what exists on disk.

Retrains are cheap (a NaiveForecaster on the builtin airline data, about 1-1.5 s each with
its worker process and gate backtest), so `RETRAINS` retrains are each followed by
`READS` predicts in a row with no sleep.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "models" / "airline" / "model.yaml").read_text())
SPEC = {**copy.deepcopy(SPEC), "forecaster": {"class": "NaiveForecaster", "params": {"strategy": "last"}}}
RETRAINS = 8  # each a fresh promotion whose every read is checked (400 reads); was 15, ~9 s more
READS = 50
NEW_MODELS = 4
REPLICA_POLL = 1.0  # FORECAST_POLL_INTERVAL of the two replicas
SLACK = 0.75  # a scan's own duration (listing, a load) on a busy 2-core machine
JOB_TIMEOUT = 60.0
BODY = {"horizon": 12}  # the precomputed fast path: answered by the fast lane from the second read on


def put_spec(http: httpx.Client, name: str) -> None:
    response = http.put(f"/v1/models/{name}", json=SPEC)
    assert response.status_code in (200, 201), response.text


def retrain_and_poll(http: httpx.Client, name: str, poll: httpx.Client | None = None) -> dict[str, Any]:
    """Start a retrain (promote always) and poll its job, with no sleep, until it finished."""
    response = http.post(f"/v1/models/{name}/retrain", json={"promote": "always"})
    assert response.status_code == 202, response.text
    job = response.json()
    deadline = time.monotonic() + JOB_TIMEOUT
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['status']} after {JOB_TIMEOUT:.0f}s"
        job = (poll or http).get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["result"]["decision"] == "promoted", job["result"]
    return job


def predict(http: httpx.Client, name: str) -> httpx.Response:
    return http.post(f"/v1/models/{name}/predict", json=BODY)


def served_version(response: httpx.Response) -> int | None:
    if response.status_code != 200:
        return None
    version = response.json()["version"]
    assert response.headers["x-model-version"] == str(version)
    return int(version)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on an empty registry: models are declared and retrained through HTTP."""
    root = tmp_path_factory.mktemp("read-your-writes")
    (root / "models").mkdir()
    with ServerFactory(root) as start:
        yield start(root / "models", data_dir=root / "data").wait_ready()


def test_predict_right_after_success_answers_the_promoted_version(server: ServerProcess) -> None:
    with server.client(timeout=30.0) as http:
        put_spec(http, "naive")
        retrain_and_poll(http, "naive")  # v1
        wrong: list[str] = []
        for _ in range(RETRAINS):
            version = retrain_and_poll(http, "naive")["result"]["version"]
            for read in range(READS):
                response = predict(http, "naive")
                if served_version(response) != version:
                    wrong.append(f"v{version}, read {read}: {response.status_code} {response.text[:120]}")
    assert not wrong, f"{len(wrong)} of {RETRAINS * READS} reads were not the promoted version: {wrong[:5]}"


def test_a_new_model_is_never_a_404_once_its_job_succeeded(server: ServerProcess) -> None:
    with server.client(timeout=30.0) as http:
        for n in range(NEW_MODELS):
            name = f"new-{n}"
            put_spec(http, name)
            assert predict(http, name).status_code == 404  # declared, never trained: no production yet
            version = retrain_and_poll(http, name)["result"]["version"]
            for _ in range(READS):
                response = predict(http, name)
                assert served_version(response) == version, response.text
            by_number = http.post(f"/v1/models/{name}/predict", json={**BODY, "version": version})
            assert served_version(by_number) == version, by_number.text


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one registry and one job store (either may run a job)."""
    (tmp_path / "models").mkdir()
    env = {"FORECAST_POLL_INTERVAL": str(REPLICA_POLL)}
    with ServerFactory(tmp_path) as start:
        first = start(tmp_path / "models", data_dir=tmp_path / "data", **env)
        second = start(tmp_path / "models", data_dir=tmp_path / "data", **env)
        yield first.wait_ready(), second.wait_ready()


def test_another_replica_converges_within_one_poll_interval(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = replicas
    with first.client(timeout=30.0) as a, second.client(timeout=30.0) as b:
        # a new model, written through A: B never saw it, yet never answers 404
        put_spec(a, "shared")
        version = retrain_and_poll(a, "shared")["result"]["version"]
        assert served_version(predict(b, "shared")) == version

        waits = []
        for _ in range(3):
            version = retrain_and_poll(a, "shared")["result"]["version"]
            seen = time.monotonic()
            answered = []
            while (got := served_version(predict(b, "shared"))) != version:
                assert got is not None, "B answered an error while converging"
                answered.append(got)
                assert time.monotonic() - seen < REPLICA_POLL + SLACK, f"B still serves v{got}, not v{version}"
            waits.append(time.monotonic() - seen)
            assert answered == sorted(answered), f"B went back in versions: {answered}"
            for _ in range(READS):  # and it stays there
                assert served_version(predict(b, "shared")) == version

        # polled on B: B reports `succeeded` only once it serves what was promoted
        for _ in range(2):
            version = retrain_and_poll(a, "shared", poll=b)["result"]["version"]
            for _ in range(READS):
                assert served_version(predict(b, "shared")) == version
    print(f"replica convergence after success: {', '.join(f'{w:.3f}s' for w in waits)} (poll {REPLICA_POLL}s)")
