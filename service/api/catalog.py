"""Read models for the listing endpoints, and alias moves that load before they flip."""

from __future__ import annotations

import contextlib

from service.documents import load_document
from service.errors import AliasesUnreadable, ServiceError, SpecError, VersionLoadError
from service.forecasting.specs import read_spec, write_spec
from service.registry.store import Registry, validate_alias
from service.schemas.models import ModelDetail, ModelList, ModelSummary, VersionSummary
from service.serving.cache import ModelCache, describe_state, scrub_paths


def list_models(registry: Registry, cache: ModelCache) -> ModelList:
    summaries = []
    for name in registry.list_models():
        spec = None
        with contextlib.suppress(ServiceError):
            spec = read_spec(registry, name)
        versions = registry.list_versions(name)
        production = None
        with contextlib.suppress(ServiceError):  # unreadable aliases: shown in the model's detail
            production = registry.read_aliases(name).get("production")
        manifest = None
        if versions:
            with contextlib.suppress(ServiceError):
                manifest = registry.read_manifest(name, production or versions[-1])
        latest = None
        if versions:
            with contextlib.suppress(ServiceError):
                latest = registry.read_manifest(name, versions[-1]).get("created_at")
        metrics = (manifest or {}).get("metrics") or {}
        summaries.append(
            ModelSummary(
                name=name,
                description=spec.description if spec else "",
                kind=(manifest or {}).get("kind") or (spec.kind if spec else None),
                freq=(manifest or {}).get("freq") or (spec.freq if spec else None),
                series_count=((manifest or {}).get("series") or {}).get("count"),
                production_version=production,
                last_trained=latest,
                headline_metric=metrics.get("headline"),
            )
        )
    return ModelList(models=summaries)


def model_detail(registry: Registry, cache: ModelCache, name: str) -> ModelDetail:
    registry.require_model(name)
    versions = []
    for v in registry.list_versions(name):
        try:
            m = registry.read_manifest(name, v)
        except ServiceError:
            m = {}
        versions.append(
            VersionSummary(
                version=v,
                created_at=m.get("created_at"),
                cutoff=m.get("cutoff"),
                forecaster=(m.get("forecaster") or {}).get("class"),
                job_id=m.get("job_id"),
            )
        )
    try:
        state = describe_state(cache.state(name), registry.root)
    except ServiceError:  # not scanned yet: the file as it is
        aliases: dict[str, int] = {}
        aliases_error = None
        try:
            aliases = registry.read_aliases(name)
        except AliasesUnreadable as exc:
            aliases_error = scrub_paths(exc.detail, registry.root)
        state = {
            "aliases": aliases,
            "serving": {},
            "loaded_versions": [],
            "load_errors": {},
            "aliases_error": aliases_error,
        }
    return ModelDetail(
        name=name,
        spec=registry.read_spec_raw(name),
        versions=versions,
        aliases=state["aliases"],
        serving=state["serving"],
        loaded_versions=state["loaded_versions"],
        load_errors=state["load_errors"],
        aliases_error=state["aliases_error"],
    )


def move_alias(registry: Registry, cache: ModelCache, name: str, alias: str, version: int) -> dict[str, int]:
    """Load the target first: a version that cannot load is refused and nothing moves."""
    validate_alias(alias)
    registry.resolve(name, version=version)
    cache.refresh(only=name)
    try:
        cache.get(name, version=version)
    except VersionLoadError:
        raise  # already says why
    except ServiceError as exc:  # e.g. an integrity error: refused the same way
        raise VersionLoadError(
            f"{name} v{version} cannot be served: {exc.detail}", model=name, version=version
        ) from exc
    aliases = registry.set_alias(name, alias, version)
    cache.refresh(only=name)
    return aliases


def put_spec(registry: Registry, name: str, body: bytes, content_type: str | None) -> tuple[bool, dict]:
    """Parse a JSON or YAML spec within the document budgets, validate it (allow-list
    included), store it atomically."""

    kind = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise SpecError("the body is empty: send the spec as JSON or YAML")
    raw = load_document(body, "json" if kind in ("application/json", "") else "yaml", "the spec")
    if not isinstance(raw, dict):
        raise SpecError("a model spec must be an object")
    existed = registry.spec_path(name).is_file()  # not parsed: a broken stored spec can be replaced
    write_spec(registry, name, raw)
    return not existed, raw
