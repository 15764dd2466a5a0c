"""The pandas-speaking Python client: send DataFrames, get DataFrames back.

with Client("http://127.0.0.1:8000", api_key=KEY) as client:
    forecast = client.predict("airline", horizon=12, coverage=[0.8])
    forecast.attrs["version"]  # the version that answered
    client.upload_dataset("sales", frame, time="month", targets=["sales"], keys=["store"], freq="M")
    job = client.retrain("sales", wait=True)  # a progress bar until it finishes

Tables go out through `service.tables.frame_to_wire` (the one client-side conversion),
sktime-style data (time in the index, panel keys as outer index levels) included; time
columns come back as pandas periods (or integers, or timestamps with ``time_as``).
"""

from __future__ import annotations

import email.utils
import io
import operator
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

import httpx
import pandas as pd

from service.tables import decode_arrow, format_time, frame_to_wire, parse_times

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
PROBLEM_JSON = "application/problem+json"
RETRY_STATUSES = (429, 503)
FINISHED = ("succeeded", "failed", "cancelled")
_INTEGER = re.compile(r"^-?\d+$")

SeriesKey = str | Sequence[str | int] | Mapping[str, str | int]
Table: TypeAlias = pd.DataFrame | pd.Series
TimeAs = Literal["period", "timestamp", "wire"]


class ForecastServiceError(Exception):
    """An error answer of the service (RFC 9457 problem+json, or any non-2xx)."""

    def __init__(self, status: int, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body


class JobFailed(Exception):
    """A job that `Client.wait` saw end otherwise than ``succeeded``; ``job`` is its last state."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        super().__init__(
            f"{job.get('kind')} job {job.get('id')} of {job.get('model')} {job.get('status')}: "
            f"{job.get('error') or 'no error reported'}"
        )
        self.job = dict(job)


class Client:
    """A synchronous client of one forecast-service (httpx underneath).

    Parameters
    ----------
    base_url, api_key
        The service, and a key sent as ``Authorization: Bearer``.
    timeout
        Seconds per HTTP request.
    retries, max_retry_wait
        A ``503`` or ``429`` answered with ``Retry-After`` is tried again after that many
        seconds (at most ``max_retry_wait`` each), up to ``retries`` times.
    transport
        An httpx transport (tests, proxies).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._schemas: dict[tuple[str, int], dict[str, Any]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request; ``503``/``429`` with ``Retry-After`` are tried again; errors raise
        `ForecastServiceError`."""
        for attempt in range(self.retries + 1):
            response = self.http.request(method, url, **kwargs)
            wait = _retry_after(response) if response.status_code in RETRY_STATUSES else None
            if wait is None or attempt == self.retries:
                break
            time.sleep(min(wait, self.max_retry_wait))
        _raise_for_problem(response)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.request(method, url, **kwargs).json()

    def _pages(self, url: str, key: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a listing, following ``next_page_token`` when the server pages
        (up to ``limit`` items when one is given)."""
        query = _params(params)
        most = query.get("limit")
        items: list[dict[str, Any]] = []
        while True:
            page = self._json("GET", url, params=query)
            items.extend(page[key])
            token = page.get("next_page_token")
            if not token or (most is not None and len(items) >= int(most)):
                return items[: int(most)] if most is not None else items
            query = {**query, "page_token": token}

    # ------------------------------------------------------------------ models
    def models(self, **params: Any) -> list[dict[str, Any]]:
        """Every model in the registry (name, kind, freq, production version, ...)."""
        return self._pages("/v1/models", "models", params)

    def model(self, name: str) -> dict[str, Any]:
        """Spec, versions, aliases and serving state of one model."""
        return self._json("GET", f"/v1/models/{name}")

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        """The manifest of one version."""
        return self._json("GET", f"/v1/models/{name}/versions/{operator.index(version)}")

    def put_spec(self, name: str, spec: Mapping[str, Any] | str | Path, **params: Any) -> dict[str, Any]:
        """Create or replace a model's spec: a mapping (sent as JSON), YAML/JSON text, or a
        ``model.yaml`` path. ``params`` go to the query (e.g. ``dry_run=True``)."""
        if isinstance(spec, Path):
            content, kind = spec.read_bytes(), "application/yaml"
        elif isinstance(spec, str):
            content, kind = spec.encode("utf-8"), "application/yaml"
        else:
            return self._json("PUT", f"/v1/models/{name}", json=dict(spec), params=_params(params))
        return self._json(
            "PUT", f"/v1/models/{name}", content=content, headers={"Content-Type": kind}, params=_params(params)
        )

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        """Point an alias at a version (promote, roll back)."""
        return self._json("PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": operator.index(version)})

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        name: str,
        horizon: int | None = None,
        fh: Sequence[int] | None = None,
        timestamps: Sequence[Any] | None = None,
        series: Sequence[SeriesKey] | None = None,
        coverage: Sequence[float] | None = None,
        quantiles: Sequence[float] | None = None,
        observations: Table | None = None,
        exogenous: Table | None = None,
        version: int | None = None,
        alias: str | None = None,
        time_as: TimeAs = "period",
    ) -> pd.DataFrame:
        """Forecast table of a model; ``attrs`` carry the model, version and cutoff that answered.

        ``observations`` (new actuals after the cutoff) and ``exogenous`` (future values) are
        long tables with the model's column names, or sktime-style ``y``/``X``: the time in
        the index (a panel's keys as the outer levels of a MultiIndex), a Series named by
        the target or not named. Only the series given are sent. The time column comes back
        as periods (``time_as="timestamp"``: each period's start; ``"wire"``: as sent).
        """
        schema = None
        if _needs_schema(observations) or _needs_schema(exogenous):
            schema = self.schema(name, version, alias)
        body: dict[str, Any] = {
            "horizon": operator.index(horizon) if horizon is not None else None,
            "fh": [operator.index(step) for step in fh] if fh is not None else None,
            "timestamps": [format_time(t) for t in timestamps] if timestamps is not None else None,
            "series": [_series_key(s) for s in series] if series is not None else None,
            "coverage": [float(c) for c in coverage] if coverage is not None else None,
            "quantiles": [float(q) for q in quantiles] if quantiles is not None else None,
            "observations": _wire(observations, schema, "targets") if observations is not None else None,
            "exogenous": _wire(exogenous, schema, "exogenous") if exogenous is not None else None,
            "version": operator.index(version) if version is not None else None,
            "alias": alias,
        }
        response = self.request(
            "POST",
            f"/v1/models/{name}/predict",
            json={k: v for k, v in body.items() if v is not None},
            headers={"Accept": ARROW},
        )
        frame = decode_arrow(response.content)
        cutoff = response.headers.get("X-Cutoff")
        answered = int(response.headers["X-Model-Version"]) if "X-Model-Version" in response.headers else None
        if time_as != "wire" and answered is not None:
            frame = self._typed_times(frame, name, answered, time_as)
        frame.attrs.update(
            model=response.headers.get("X-Model"),
            version=answered,
            cutoff=int(cutoff) if cutoff is not None and _INTEGER.match(cutoff) else cutoff,
        )
        if "X-Observations-Mode" in response.headers:  # how the version took new actuals: state | refit
            frame.attrs["observations_mode"] = response.headers["X-Observations-Mode"]
        return frame

    def schema(self, name: str, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        """The table schema (keys, time, targets, exogenous, freq) of the version a request
        names, or of the one the server answers with; manifests are immutable: cached."""
        if version is None:
            detail = self.model(name)
            wanted = alias or "production"
            number = (detail.get("serving") or {}).get(wanted) or (detail.get("aliases") or {}).get(wanted)
            if number is None:
                versions = [v["version"] for v in detail.get("versions", [])]
                if not versions:
                    raise ForecastServiceError(404, "Version not found", f"model '{name}' has no version")
                number = versions[-1]
            version = int(number)
        key = (name, operator.index(version))
        if key not in self._schemas:
            self._schemas[key] = self.manifest(name, key[1])["schema"]
        return self._schemas[key]

    def _typed_times(self, frame: pd.DataFrame, name: str, version: int, time_as: TimeAs) -> pd.DataFrame:
        schema = self.schema(name, version, None)
        column = schema["time"]
        if column not in frame.columns or frame.empty:
            return frame
        times = parse_times(frame[column], schema.get("freq"), column)
        if time_as == "timestamp" and isinstance(times, pd.PeriodIndex):
            times = times.to_timestamp()
        frame[column] = times
        return frame

    # ------------------------------------------------------------------ datasets
    def upload_dataset(
        self,
        name: str,
        data: Table | Path,
        *,
        time: str | None = None,
        targets: Sequence[str] | None = None,
        keys: Sequence[str] | None = None,
        exogenous: Sequence[str] | None = None,
        freq: str | None = None,
        model: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Upload a whole table as a new version of a dataset (a long table, or sktime-style
        with the time, and a panel's keys, in the index). Column roles: the arguments, else
        ``model``'s spec, else the dataset's current roles. ``params`` go to the query."""
        schema = {"time": time, "keys": list(keys or ()), "targets": list(targets or ())}
        if not isinstance(data, Path) and _needs_schema(data) and time is None:
            schema = {**self._roles(name, model), **{k: v for k, v in schema.items() if v}}
        roles = {
            "time": time,
            "targets": _csv(targets),
            "keys": _csv(keys),
            "exogenous": _csv(exogenous),
            "freq": freq,
            "model": model,
        }
        content, kind = (
            _table_file(data) if isinstance(data, Path) else (_parquet(_long_frame(data, schema, "targets")), PARQUET)
        )
        return self._json(
            "PUT",
            f"/v1/datasets/{name}",
            content=content,
            headers={"Content-Type": kind},
            params=_params({**roles, **params}),
        )

    def append(
        self,
        name: str,
        data: Table | Path,
        *,
        time: str | None = None,
        keys: Sequence[str] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Append rows to a dataset (same key+time replaces): a new version. Only the rows
        and series given are sent."""
        schema: Mapping[str, Any] = {"time": time, "keys": list(keys or ()), "targets": []}
        if not isinstance(data, Path) and _needs_schema(data) and time is None:
            schema = self._roles(name, None)
        content, kind = (
            _table_file(data) if isinstance(data, Path) else (_parquet(_long_frame(data, schema, "targets")), PARQUET)
        )
        return self._json(
            "POST",
            f"/v1/datasets/{name}/observations",
            content=content,
            headers={"Content-Type": kind},
            params=_params(params),
        )

    def _roles(self, name: str, model: str | None) -> dict[str, Any]:
        """Column roles of a dataset for sktime-style data: the model's spec, else the
        dataset's own roles, else none (the index names are used)."""
        try:
            if model is not None:
                spec = self.model(model).get("spec") or {}
                return dict(spec.get("data") or {})
            return dict(self.dataset(name)["roles"])
        except ForecastServiceError as exc:
            if exc.status != 404:
                raise
            return {}

    def datasets(self, **params: Any) -> list[dict[str, Any]]:
        """Every dataset with its roles and versions."""
        return self._pages("/v1/datasets", "datasets", params)

    def dataset(self, name: str) -> dict[str, Any]:
        """Roles, versions, series count and time range of one dataset."""
        return self._json("GET", f"/v1/datasets/{name}")

    # ------------------------------------------------------------------ monitoring
    def send_actuals(self, name: str, data: Table | Path) -> dict[str, Any]:
        """Actuals of a model (a long table with its column names, sktime-style data, or a
        CSV/JSON/Parquet file): joined to every recorded forecast and scored. Returns the
        report: ``rows``, ``matched``, ``unmatched``, ``anomalies`` and the ``drift`` policy's
        state (with the retrain job a breach triggered, under ``action: retrain``)."""
        if isinstance(data, Path):
            content, kind = _table_file(data)
        else:
            schema = self.schema(name) if _needs_schema(data) else {}
            content, kind = _parquet(_long_frame(data, schema, "targets")), PARQUET
        return self._json("POST", f"/v1/models/{name}/actuals", content=content, headers={"Content-Type": kind})

    def monitoring(
        self,
        name: str,
        version: int | None = None,
        series: Sequence[SeriesKey] | None = None,
        since: Any = None,
        window: int | None = None,
    ) -> dict[str, Any]:
        """Live accuracy per version over the rolling window (overall, per step, per series),
        what each version's backtest promised, live / promised, and the drift policy's state."""
        query = {
            "version": operator.index(version) if version is not None else None,
            "series": self._series_query(name, series),
            "since": format_time(since) if since is not None else None,
            "window": operator.index(window) if window is not None else None,
        }
        return self._json("GET", f"/v1/models/{name}/monitoring", params=_params(query))

    def anomalies(
        self,
        name: str,
        since: Any = None,
        series: Sequence[SeriesKey] | None = None,
        coverage: float | None = None,
        time_as: TimeAs = "period",
    ) -> pd.DataFrame:
        """Actuals outside the interval of the forecast served for them, one row each: the
        model's key columns, its time column (periods; ``time_as`` as in `predict`), actual,
        forecast, lower, upper, side, score, level, version, cutoff, step, kind. ``attrs``
        carry ``model``, ``coverage``, ``since``, ``scored`` and ``count``."""
        query = {
            "since": format_time(since) if since is not None else None,
            "series": self._series_query(name, series),
            "coverage": float(coverage) if coverage is not None else None,
        }
        doc = self._json("GET", f"/v1/models/{name}/anomalies", params=_params(query))
        try:
            schema: Mapping[str, Any] | None = self.schema(name)
        except ForecastServiceError as exc:  # a model without a version: nothing to name the columns by
            if exc.status != 404:
                raise
            schema = None
        frame = _anomaly_frame(doc["anomalies"], schema, time_as)
        frame.attrs.update({k: doc.get(k) for k in ("model", "coverage", "since", "scored", "count")})
        return frame

    def _series_query(self, name: str, series: Sequence[SeriesKey] | None) -> list[str] | None:
        """Series for a query string: key values joined by '/', top level first."""
        if series is None:
            return None
        keys: list[str] = []
        if any(isinstance(s, Mapping) for s in series):
            keys = list(self.schema(name)["keys"])
        out = []
        for key in series:
            if isinstance(key, str):
                out.append(key)
            elif isinstance(key, Mapping):
                out.append("/".join(str(key[k]) for k in keys if k in key))
            else:
                out.append("/".join(str(v) for v in key))
        return out

    # ------------------------------------------------------------------ jobs
    def backtest(
        self,
        name: str,
        splitter: Mapping[str, Any] | None = None,
        *,
        strategy: str | None = None,
        metrics: Sequence[str] | None = None,
        coverage: Sequence[float] | None = None,
        quantiles: Sequence[float] | None = None,
        series: Sequence[SeriesKey] | None = None,
        version: int | None = None,
        alias: str | None = None,
        dataset: str | None = None,
        dataset_version: str | None = None,
        wait: bool = False,
        progress: bool = True,
        timeout: float = 3600.0,
        check: bool = True,
        **params: Any,
    ) -> dict[str, Any]:
        """Start a backtest job (sktime `evaluate`); ``splitter`` e.g. ``{"type": "folds",
        "folds": 3, "horizon": 12}``. Returns the job; ``wait``: the finished job."""
        body = {
            "splitter": dict(splitter) if splitter is not None else None,
            "strategy": strategy,
            "metrics": list(metrics) if metrics is not None else None,
            "coverage": [float(c) for c in coverage] if coverage is not None else None,
            "quantiles": [float(q) for q in quantiles] if quantiles is not None else None,
            "series": [_series_key(s) for s in series] if series is not None else None,
            "version": operator.index(version) if version is not None else None,
            "alias": alias,
            "dataset": dataset,
            "dataset_version": dataset_version,
        }
        job = self._json(
            "POST",
            f"/v1/models/{name}/backtests",
            json={k: v for k, v in body.items() if v is not None},
            params=_params(params),
        )
        return self.wait(job, timeout=timeout, progress=progress, check=check) if wait else job

    def leaderboard(
        self,
        name: str,
        body: Mapping[str, Any],
        *,
        publish: Literal["best"] | None = None,
        wait: bool = False,
        progress: bool = True,
        timeout: float = 3600.0,
        check: bool = True,
    ) -> dict[str, Any]:
        """Start a leaderboard job: ``body`` has ``candidates`` (each ``{name, forecaster}``)
        and optionally ``splitter``, ``metrics``, ``rank_by``; ``publish="best"`` retrains
        with the winner through the gate. Returns the job; ``wait``: the finished job."""
        query = {"publish": publish} if publish else {}
        job = self._json("POST", f"/v1/models/{name}/leaderboard", json=dict(body), params=query)
        return self.wait(job, timeout=timeout, progress=progress, check=check) if wait else job

    def retrain(
        self,
        name: str,
        *,
        promote: Literal["auto", "always", "never"] | None = None,
        dataset_version: str | None = None,
        gate: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        wait: bool = False,
        progress: bool = True,
        timeout: float = 3600.0,
        check: bool = True,
    ) -> dict[str, Any]:
        """Start a retrain job (or get the one queued or running). Returns the job;
        ``wait``: the finished job."""
        body = {"promote": promote, "dataset_version": dataset_version, "gate": dict(gate) if gate else None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        job = self._json(
            "POST",
            f"/v1/models/{name}/retrain",
            json={k: v for k, v in body.items() if v is not None},
            headers=headers,
        )
        return self.wait(job, timeout=timeout, progress=progress, check=check) if wait else job

    def job(self, job_id: str) -> dict[str, Any]:
        """One job: status, progress, timestamps, error, result."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, model: str | None = None, kind: str | None = None, status: str | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        """Jobs, newest first (every page)."""
        return self._pages("/v1/jobs", "jobs", {"model": model, "kind": kind, "status": status, **params})

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def wait(
        self,
        job: str | Mapping[str, Any],
        *,
        timeout: float = 3600.0,
        poll: float = 0.5,
        progress: bool = True,
        check: bool = True,
    ) -> dict[str, Any]:
        """Poll a job until it finishes, with a progress bar on stderr (``progress``);
        ``check``: raise `JobFailed` unless it succeeded. Raises ``TimeoutError`` after
        ``timeout`` seconds."""
        current = dict(job) if isinstance(job, Mapping) else self.job(job)
        deadline = time.monotonic() + timeout
        with _job_progress(current, progress) as show:
            while current["status"] not in FINISHED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {current['id']} still {current['status']} after {timeout:.0f}s")
                time.sleep(poll)
                current = self.job(current["id"])
                show(current)
        if check and current["status"] != "succeeded":
            raise JobFailed(current)
        return current


# ---------------------------------------------------------------------- helpers
def _job_progress(job: Mapping[str, Any], enabled: bool) -> Any:
    """A context manager yielding ``show(job)``: a rich progress bar on stderr, or nothing."""
    import contextlib

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[Mapping[str, Any]], None]]:
        if not enabled:
            yield lambda _job: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as shown:
            task = shown.add_task(f"{job['kind']} {job['model']}", total=None)

            def show(current: Mapping[str, Any]) -> None:
                stage = (current.get("progress") or {}).get("stage")
                done = (current.get("progress") or {}).get("done") or 0
                total = (current.get("progress") or {}).get("total")
                label = f"{current['kind']} {current['model']}" + (f": {stage}" if stage else "")
                shown.update(task, description=label, completed=done, total=total)

            show(job)
            yield show

    return bar()


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the unset ones; booleans as ``true``/``false``."""
    return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items() if v is not None}


def _csv(values: Sequence[str] | None) -> str | None:
    return ",".join(values) if values else None


def _needs_schema(data: Table | None) -> bool:
    """Whether a table is sktime-style: a Series, or a frame with an index of its own (the
    time, and a panel's keys as outer levels) rather than the default 0..n-1."""
    if data is None:
        return False
    if isinstance(data, pd.Series):
        return True
    index = data.index
    default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None
    return not default


def _long_frame(data: Table, schema: Mapping[str, Any], values: str) -> pd.DataFrame:
    """A long table with the schema's column names: sktime-style data (time in the index,
    keys as outer levels; a Series named by its target or unnamed) has its index levels
    made columns; a long table (the time among its columns) is returned as it is."""
    time, keys = schema.get("time"), list(schema.get("keys") or ())
    names = list(schema.get(values) or ())
    if isinstance(data, pd.Series):
        name = names[0] if len(names) == 1 else (data.name if data.name is not None else "y")
        frame = data.to_frame(str(name))
    else:
        frame = data
    if (time is not None and time in frame.columns) or not _needs_schema(frame):
        return frame
    levels: list[Any] = list(frame.index.names)
    if time is not None and len(levels) == len(keys) + 1:
        levels = [*keys, time]
    else:
        outer = [
            n if n is not None else (keys[i] if i < len(keys) else f"level_{i}") for i, n in enumerate(levels[:-1])
        ]
        levels = [*outer, levels[-1] if levels[-1] is not None else (time or "time")]
    return frame.rename_axis(levels).reset_index()


def _wire(data: Table, schema: Mapping[str, Any] | None, values: str) -> dict[str, list[Any]]:
    if schema is not None:
        return frame_to_wire(_long_frame(data, schema, values))
    assert isinstance(data, pd.DataFrame)
    return frame_to_wire(data)


def _table_file(path: Path) -> tuple[bytes, str]:
    """A table file's bytes and content type, sent as they are (the server parses them)."""
    kinds = {".csv": "text/csv", ".json": "application/json", ".parquet": PARQUET, ".pq": PARQUET}
    kind = kinds.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: send a .csv, .json or .parquet file, or a DataFrame")
    return path.read_bytes(), kind


def _parquet(frame: pd.DataFrame) -> bytes:
    """A table as Parquet, its cells as `frame_to_wire` writes them (ISO times, nulls)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(frame_to_wire(frame)), buffer)
    return buffer.getvalue()


ANOMALY_COLUMNS = (
    "actual",
    "forecast",
    "lower",
    "upper",
    "side",
    "score",
    "level",
    "version",
    "cutoff",
    "step",
    "kind",
)


def _anomaly_frame(
    rows: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None, time_as: TimeAs
) -> pd.DataFrame:
    """Anomalies as a table: ``series`` expanded into the key columns, ``time`` named by the
    model's time column; times (and cutoffs) as periods unless ``time_as="wire"``."""
    if schema is None:
        return pd.DataFrame(list(rows))
    keys, column, freq = list(schema.get("keys") or ()), str(schema["time"]), schema.get("freq")
    extra = ["target"] if any("target" in r for r in rows) else []
    columns = [*keys, *extra, column, *ANOMALY_COLUMNS]
    records = [
        {**dict(zip(keys, r["series"], strict=True)), column: r["time"], **{k: v for k, v in r.items() if k != "time"}}
        for r in rows
    ]
    frame = pd.DataFrame(records, columns=columns)
    if time_as != "wire" and len(frame):
        for name in (column, "cutoff"):
            times = parse_times(frame[name].tolist(), freq, name)
            if time_as == "timestamp" and isinstance(times, pd.PeriodIndex):
                times = times.to_timestamp()
            frame[name] = times
    return frame


def _series_key(key: SeriesKey) -> Any:
    if isinstance(key, str):
        return key
    if isinstance(key, Mapping):
        return {str(k): str(v) for k, v in key.items()}
    return [str(v) for v in key]


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    body: Any = None
    title, detail = response.reason_phrase or "HTTP error", response.text[:500]
    content_type = response.headers.get("content-type", "")
    if PROBLEM_JSON in content_type or "json" in content_type:
        try:
            body = response.json()
        except ValueError:
            body = None
    if isinstance(body, dict):
        title = str(body.get("title", title))
        detail = str(body.get("detail", detail))
    raise ForecastServiceError(response.status_code, title, detail, body if body is not None else response.text)
