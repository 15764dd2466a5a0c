"""Starting a retrain job: validation, idempotency, one active retrain per model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.datasets.sources import resolve_source_path
from service.errors import InvalidInput
from service.jobs.retrain import RetrainParams, check_gate_metric
from service.jobs.store import Job, JobStore
from service.registry.store import Registry


def request_hash(name: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps({"model": name, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_retrain(
    jobs: JobStore,
    registry: Registry,
    name: str,
    body: Mapping[str, Any],
    idempotency_key: str | None = None,
    *,
    check_source: bool = True,
    sources_root: Path | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). Same key + same body: the same job; same key + another
    body: 422; a retrain of this model already queued or running: that job. With
    ``check_source`` a ``path`` source outside the model folder (or ``sources_root``) is a
    422 before any job exists."""
    registry.require_model(name)
    spec = registry.read_spec(name)  # an invalid model.yaml on disk: 409 naming it, before any job
    if spec is None:
        raise InvalidInput(f"model '{name}' has no spec (model.yaml) to retrain from", model=name)
    if check_source and "path" in spec.data.source:
        resolve_source_path(spec.data.source["path"], registry.model_dir(name), sources_root)
    params = RetrainParams.from_dict(body)
    if params.promote not in (None, "auto", "always", "never"):
        raise InvalidInput("'promote' must be auto, always or never", field="promote")
    if params.gate_metric is not None:
        check_gate_metric(params.gate_metric)
    if params.gate_tolerance is not None and params.gate_tolerance < 0:
        raise InvalidInput("'gate.tolerance' must be >= 0", field="gate.tolerance")
    return jobs.create(
        "retrain",
        name,
        dict(body),
        idempotency_key=idempotency_key,
        request_hash=request_hash(name, body),
        exclusive=True,
    )
