"""The house rule: imports point down the layers, never up, never in a circle.

    cli/app  ->  api (+ schemas beside it)  ->  runtime  ->  jobs  ->  serving
             ->  forecasting  ->  {registry, datasets, records}  ->  ground

A module may import its own layer or any layer below; the stores never import each
other; schemas never import the api. A function-level import of our own modules needs
a reason in `DEFERRED` (start-up cost, an optional extra).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "service"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("service.cli", "service.app", "service.__main__", "service.client")),
    ("api", ("service.api", "service.schemas")),
    ("runtime", ("service.runtime",)),
    ("jobs", ("service.jobs",)),
    ("serving", ("service.serving",)),
    ("forecasting", ("service.forecasting",)),
    ("stores", ("service.registry", "service.datasets", "service.records")),
    (
        "ground",
        (
            "service.tables",
            "service.errors",
            "service.settings",
            "service.security",
            "service.observability",
            "service.fileio",
            "service.documents",
            "service.processes",
            "service.serving_protocol",
            "service",
        ),
    ),
]
# (importer, imported) inside a function, with the reason it cannot be at the top
DEFERRED: dict[tuple[str, str], str] = {
    ("service.jobs.executors.dask", "service.jobs.executors.dask_plugins"): (
        "optional dependency: the plugin subclasses distributed's WorkerPlugin, imported only once a "
        "scheduler is configured (the scale extra)"
    ),
    **{
        ("service.cli", target): "start-up cost: `forecast-service models list` must not import sktime or FastAPI"
        for target in (
            "service.api",
            "service.api.catalog",
            "service.api.uploads",
            "service.app",
            "service.client",
            "service.datasets.store",
            "service.documents",
            "service.forecasting.backtest",
            "service.forecasting.mlflow_export",
            "service.forecasting.publishing",
            "service.forecasting.served",
            "service.forecasting.shards",
            "service.forecasting.training",
            "service.jobs.executors.local",
            "service.jobs.monitor",
            "service.jobs.retrain",
            "service.jobs.runner",
            "service.jobs.store",
            "service.jobs.submit",
            "service.observability",
            "service.records.store",
            "service.registry.store",
            "service.runtime",
            "service.schemas.jobs",
            "service.schemas.predict",
            "service.serving_protocol",
            "service.settings",
            "service.tables",
        )
    },
    ("service.runtime", "service.jobs.executors.dask"): "the scale extra (dask.distributed) is optional",
    ("service.registry.store", "service.tables"): "start-up cost: listing the registry must not import pandas",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best, rank = -1, len(LAYERS)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def store_of(module: str) -> str | None:
    for store in ("service.registry", "service.datasets", "service.records"):
        if module == store or module.startswith(store + "."):
            return store
    return None


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(top-level imports, function-level imports) of our own modules."""
    tree = ast.parse(path.read_text())
    inner_nodes = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    top: set[str] = set()
    inner: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        found = {t for t in targets if t in MODULES}
        (inner if id(node) in inner_nodes else top).update(found)
    return top, inner


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def test_no_import_climbs_a_layer() -> None:
    climbs = [
        f"{importer} ({LAYERS[layer_of(importer)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for importer, (top, inner) in GRAPH.items()
        for target in top | inner
        if layer_of(target) < layer_of(importer)
    ]
    assert not climbs, "\n".join(sorted(climbs))


def test_the_stores_do_not_borrow_from_each_other_and_schemas_not_from_the_api() -> None:
    wrong = []
    for importer, (top, inner) in GRAPH.items():
        for target in top | inner:
            a, b = store_of(importer), store_of(target)
            if a and b and a != b:
                wrong.append(f"{importer} -> {target}")
            if importer.startswith("service.schemas") and target.startswith("service.api"):
                wrong.append(f"{importer} -> {target}")
    assert not wrong, wrong


def test_no_import_circle() -> None:
    edges = defaultdict(set)
    for importer, (top, inner) in GRAPH.items():
        edges[importer] |= {t for t in top | inner if t != importer and not importer.startswith(t + ".")}
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not circles, circles


def test_function_level_imports_of_our_modules_have_a_documented_reason() -> None:
    undocumented = sorted(
        f"{importer} -> {target}"
        for importer, (_, inner) in GRAPH.items()
        for target in inner
        if (importer, target) not in DEFERRED
    )
    assert not undocumented, undocumented


@pytest.mark.parametrize(
    ("importer", "target"),
    [("service.registry.store", "service.forecasting.specs"), ("service.tables", "service.app")],
)
def test_the_rule_sees_a_climb(importer: str, target: str) -> None:
    assert layer_of(target) < layer_of(importer)
