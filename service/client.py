"""The pandas-speaking Python client: send DataFrames, get DataFrames back.

with Client("http://127.0.0.1:8000") as client:
    forecast = client.predict("airline", horizon=12, coverage=[0.8])
    forecast.attrs["version"]  # the version that answered
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
import pandas as pd

from service.tables import decode_arrow, format_time, frame_to_wire

ARROW = "application/vnd.apache.arrow.stream"
PROBLEM_JSON = "application/problem+json"
_INTEGER = re.compile(r"^-?\d+$")

SeriesKey = str | Sequence[str | int] | Mapping[str, str | int]


class ForecastServiceError(Exception):
    """An error answer of the service (RFC 9457 problem+json, or any non-2xx)."""

    def __init__(self, status: int, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body


class Client:
    """A synchronous client of one forecast-service (httpx underneath)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # ------------------------------------------------------------------ models
    def models(self) -> list[dict[str, Any]]:
        """Every model in the registry (name, kind, freq, production version, ...)."""
        return self._json(self.http.get("/v1/models"))["models"]

    def model(self, name: str) -> dict[str, Any]:
        """Spec, versions, aliases and serving state of one model."""
        return self._json(self.http.get(f"/v1/models/{name}"))

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
        observations: pd.DataFrame | None = None,
        exogenous: pd.DataFrame | None = None,
        version: int | None = None,
        alias: str | None = None,
    ) -> pd.DataFrame:
        """Forecast table of a model; ``attrs`` carry the model, version and cutoff that answered."""
        body: dict[str, Any] = {
            "horizon": operator.index(horizon) if horizon is not None else None,
            "fh": [operator.index(step) for step in fh] if fh is not None else None,
            "timestamps": [format_time(t) for t in timestamps] if timestamps is not None else None,
            "series": [_series_key(s) for s in series] if series is not None else None,
            "coverage": [float(c) for c in coverage] if coverage is not None else None,
            "quantiles": [float(q) for q in quantiles] if quantiles is not None else None,
            "observations": frame_to_wire(observations) if observations is not None else None,
            "exogenous": frame_to_wire(exogenous) if exogenous is not None else None,
            "version": operator.index(version) if version is not None else None,
            "alias": alias,
        }
        response = self.http.post(
            f"/v1/models/{name}/predict",
            json={k: v for k, v in body.items() if v is not None},
            headers={"Accept": ARROW},
        )
        _raise_for_problem(response)
        frame = decode_arrow(response.content)
        cutoff = response.headers.get("X-Cutoff")
        frame.attrs.update(
            model=response.headers.get("X-Model"),
            version=int(response.headers["X-Model-Version"]) if "X-Model-Version" in response.headers else None,
            cutoff=int(cutoff) if cutoff is not None and _INTEGER.match(cutoff) else cutoff,
        )
        return frame

    def _json(self, response: httpx.Response) -> Any:
        _raise_for_problem(response)
        return response.json()


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
