"""The allow-list as `GET /v1/forecasters` lists it: each class's parameters and tags.

Read from the allow-listed classes themselves (sktime's ``get_param_names`` and
``get_class_tags``, the constructor's signature for defaults), never from sktime's whole
registry; computed once per process.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from service.errors import NotFound
from service.forecasting.allowlist import ALLOWED, FAMILIES, allowed_classes, refused_param
from service.forecasting.specs import did_you_mean, jsonable

_NO_DEFAULT = inspect.Parameter.empty


def _parameters(class_name: str, target: Any) -> list[dict[str, Any]]:
    signature = inspect.signature(target)
    get_names = getattr(target, "get_param_names", None)  # sktime's public one
    if inspect.isclass(target) and callable(get_names):
        names = list(get_names())
    else:  # a factory (make_reduction) or a scikit-learn regressor: its keyword parameters
        names = [
            n
            for n, p in signature.parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
    described = []
    for name in names:
        parameter = signature.parameters.get(name)
        default = parameter.default if parameter is not None else _NO_DEFAULT
        described.append(
            {
                "name": name,
                "required": default is _NO_DEFAULT,
                "default": None if default is _NO_DEFAULT else jsonable(default),
                "refused": refused_param(class_name, name),
            }
        )
    return described


def _kind(family: str, target: Any, tags: dict[str, Any]) -> str:
    if not inspect.isclass(target):
        return "factory"
    if tags.get("object_type"):
        kind = tags["object_type"]
        return kind if isinstance(kind, str) else "/".join(map(str, kind))
    return "regressor" if family == "regressors" else "transformer"


def _describe(family: str, name: str, target: Any) -> dict[str, Any]:
    get_tags = getattr(target, "get_class_tags", None)
    tags = jsonable(get_tags()) if inspect.isclass(target) and callable(get_tags) else {}
    return {
        "name": name,
        "family": family,
        "import_path": ALLOWED[name].replace(":", "."),
        "kind": _kind(family, target, tags),
        "summary": (inspect.getdoc(target) or "").split("\n", 1)[0][:300],
        "parameters": _parameters(name, target),
        "tags": tags,
    }


@functools.cache
def allow_list_catalog() -> tuple[dict[str, Any], ...]:
    """Every allow-listed class or factory whose package is installed, by family."""
    found = allowed_classes()
    return tuple(
        _describe(family, name, found[name])
        for family, entries in FAMILIES.items()
        for name in entries
        if name in found
    )


def describe_forecaster(name: str) -> dict[str, Any]:
    """One entry of the catalogue; an unknown name is a `NotFound` with a did-you-mean."""
    for entry in allow_list_catalog():
        if entry["name"] == name:
            return entry
    suggestion = did_you_mean(name)
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    raise NotFound(
        f"'{name[:200]}' is not in the allow-list{hint} (GET /v1/forecasters lists them)",
        forecaster=name[:200],
        **({"suggestion": suggestion} if suggestion else {}),
    )
