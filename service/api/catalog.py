"""Read models for the listing endpoints, and alias moves that load before they flip."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

from service.api.paging import decode_page_token, encode_page_token
from service.datasets.store import DATASET_NAME, DatasetStore
from service.documents import load_document
from service.errors import AliasesUnreadable, InvalidInput, NotFound, ServiceError, SpecError, VersionLoadError
from service.forecasting.specs import (
    PRESETS,
    check_against_dataset,
    parse_model_spec,
    read_spec,
    write_spec,
)
from service.registry.store import NAME_PATTERN, SPEC_FILE, Registry, validate_alias
from service.schemas.datasets import DatasetInfo, DatasetList
from service.schemas.models import ModelDetail, ModelList, ModelSummary, VersionSummary
from service.serving.cache import ModelCache, describe_state, scrub_paths
from service.tables import SEASON_LENGTHS

MAX_PAGE = 1000


def _after(page_token: str | None, names: re.Pattern[str] = NAME_PATTERN) -> str | None:
    """The last name of the previous page, from its token (a name: anything else was never given out)."""
    after = decode_page_token(page_token)
    if after is not None and not names.fullmatch(after):
        raise InvalidInput(
            "page_token is not one this server gave out: send the next_page_token of the previous page, "
            "or none for the first page",
            field="page_token",
        )
    return after


def list_models(registry: Registry, cache: ModelCache, limit: int = 100, page_token: str | None = None) -> ModelList:
    """One page of models in name order; ``next_page_token`` resumes after its last name
    (models added or removed meanwhile do not shift the pages)."""
    after = _after(page_token)
    names = [n for n in registry.list_models() if after is None or n > after]
    page = names[: max(1, min(int(limit), MAX_PAGE))]
    summaries = []
    for name in page:
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
                description=(spec.description if spec else "") or (manifest or {}).get("description") or "",
                kind=(manifest or {}).get("kind") or (spec.kind if spec else None),
                freq=(manifest or {}).get("freq") or (spec.freq if spec else None),
                series_count=((manifest or {}).get("series") or {}).get("count"),
                production_version=production,
                last_trained=latest,
                headline_metric=metrics.get("headline"),
                tags=_tags(manifest),
            )
        )
    more = len(names) > len(page)
    return ModelList(models=summaries, next_page_token=encode_page_token(page[-1]) if more else None)


def preset_catalog() -> list[dict[str, Any]]:
    """The presets a spec may name (`service.forecasting.specs.PRESETS`), as GET /v1/forecasters lists them."""
    seasons = ", ".join(f"{freq} {sp}" for freq, sp in SEASON_LENGTHS.items() if freq != "H")
    return [
        {
            "name": name,
            "forecaster": entry["class"],
            "summary": entry["summary"],
            "defaults": {"sp": f"from the model's freq: {seasons}, else 1"},
            "example": {"preset": name},
        }
        for name, entry in sorted(PRESETS.items())
    ]


def list_datasets(store: DatasetStore, limit: int = 100, page_token: str | None = None) -> DatasetList:
    """One page of datasets in name order, like `list_models`; a dataset deleted between the
    listing and its read is left out."""
    after = _after(page_token, DATASET_NAME)
    limit = max(1, min(int(limit), MAX_PAGE))
    names = store.names(after=after, limit=limit + 1)
    page = []
    for name in names[:limit]:
        with contextlib.suppress(NotFound):
            page.append(DatasetInfo(**store.describe(name)))
    more = len(names) > limit
    return DatasetList(datasets=page, next_page_token=encode_page_token(names[limit - 1]) if more else None)


def _tags(manifest: Mapping[str, Any] | None) -> list[str]:
    tags = (manifest or {}).get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else []


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
                description=m.get("description") if isinstance(m.get("description"), str) else None,
                tags=_tags(m),
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


def put_spec(
    registry: Registry,
    datasets: DatasetStore,
    name: str,
    body: bytes,
    content_type: str | None,
    dry_run: bool = False,
) -> tuple[bool, dict, dict]:
    """Parse a JSON or YAML spec within the document budgets, validate it (allow-list
    included), check it against its dataset, and (unless ``dry_run``) store it atomically.
    Returns (created, the document, what was checked)."""

    kind = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise SpecError("the body is empty: send the spec as JSON or YAML")
    raw = load_document(body, "json" if kind in ("application/json", "") else "yaml", "the spec")
    if not isinstance(raw, dict):
        raise SpecError("a model spec must be an object")
    existed = registry.spec_path(name).is_file()  # not parsed: a broken stored spec can be replaced
    spec = parse_model_spec(raw, origin=f"{name}/{SPEC_FILE}")
    _, check = check_against_dataset(spec, datasets)
    if not dry_run:
        write_spec(registry, name, raw)
    return not existed, raw, check


def delete_version(registry: Registry, cache: ModelCache, name: str, version: int) -> None:
    """Delete a version no alias points at; memory and cached answers forget it at once."""
    registry.delete_version(name, version)
    cache.forget(name, version)
