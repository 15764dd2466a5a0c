"""Budgeted parsing of hostile JSON and YAML documents (model specs over HTTP or on disk).

A document over a budget is refused with `SpecError` (422) whose detail names the budget;
each budget is checked before the work it bounds:

- ``MAX_BYTES`` = 256 KiB of text: pure-Python PyYAML parses 0.1-1.5 MB/s; a spec is ~1 KB.
- ``MAX_DEPTH`` = 32 nested mappings/sequences, aliases expanded: a spec nests ~10 deep.
- ``MAX_NODES`` = 10,000 scalars, keys and collections, an alias counted as a copy of its target.
- ``MAX_ALIASES`` = 100 YAML alias uses (``*name``) per document: a spec needs a handful.
- YAML tags: only the core schema's null, bool, int, float, str, timestamp, seq, map and ``<<``.
- Mapping keys are strings, as in JSON, and no alias may point into its own anchor (a cycle).

YAML is checked on the composed node graph before one Python object is built: depth in
``compose_node`` (deep input fails long before Python's recursion limit), aliases as they
are met, then tags, keys, cycles and the expanded size and depth on the node DAG with
memoisation, so a "billion laughs" document costs microseconds. JSON: orjson refuses more
than 1024 levels itself; its result is walked iteratively. The value returned is a plain
tree (no object appears twice), so nothing that walks or dumps it later pays more than the
budget allows.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from service.errors import SpecError

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 10_000
MAX_ALIASES = 100

_CORE = "tag:yaml.org,2002:"
SAFE_TAGS = frozenset(_CORE + t for t in ("null", "bool", "int", "float", "str", "timestamp", "seq", "map", "merge"))
_STR = _CORE + "str"
_MERGE = _CORE + "merge"
_MESSAGE_CHARS = 500  # parser messages quote the input: keep error bodies small

Kind = Literal["json", "yaml"]


def _over(what: str, budget: str, limit: int, message: str) -> SpecError:
    return SpecError(f"{what} {message} (limit {budget}={limit})", budget=budget, limit=limit)


def _too_deep(what: str) -> SpecError:
    return _over(what, "MAX_DEPTH", MAX_DEPTH, f"nests deeper than {MAX_DEPTH} levels")


def _too_big(what: str) -> SpecError:
    return _over(what, "MAX_NODES", MAX_NODES, f"expands to more than {MAX_NODES} values")


def _invalid(what: str, kind: Kind, exc: Exception) -> SpecError:
    return SpecError(f"{what} is not valid {kind.upper()}: {exc}"[:_MESSAGE_CHARS])


def load_document(data: bytes | str, kind: Kind, what: str = "the document") -> Any:
    """Parse JSON or YAML within the module's budgets, or raise `SpecError`.

    Parameters
    ----------
    data : bytes or str
        The document; bytes are decoded as the format says (UTF-8, or a YAML BOM).
    kind : "json" or "yaml"
        The format.
    what : str
        How error messages name the document, e.g. ``"the spec"`` or ``"airline/model.yaml"``.

    Returns
    -------
    The parsed value (``None`` for an empty YAML document) as a tree of dicts, lists and
    scalars in which no object appears twice.
    """
    if kind not in ("json", "yaml"):
        raise ValueError(f"kind must be 'json' or 'yaml', not {kind!r}")
    if len(data) > MAX_BYTES:
        raise _over(what, "MAX_BYTES", MAX_BYTES, f"is longer than {MAX_BYTES} bytes")
    if kind == "json":
        return _load_json(data, what)
    return _load_yaml(data, what)


def check_budget(obj: Any, what: str = "the document") -> int:
    """Check an already-parsed value against ``MAX_DEPTH`` and ``MAX_NODES``; return its size.

    Shared containers count once per place they appear, but are walked once (memoised by
    identity), so a value built from shared references is refused as fast as it is cheap;
    a container that contains itself is refused.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded size, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        value, finished = stack.pop()
        if not isinstance(value, dict | list | tuple):
            continue
        key = id(value)
        if len(value) >= MAX_NODES:
            raise _too_big(what)
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        if finished:
            size, depth = _combine((sizes.get(id(c), (1, 0)) for c in children), what)
            sizes[key] = (size, depth)
            on_path.discard(key)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError(f"{what} contains itself (a cycle)", budget="cycle")
        if len(on_path) >= MAX_DEPTH:
            raise _too_deep(what)
        on_path.add(key)
        stack.append((value, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(obj)][0] if id(obj) in sizes else 1


def _combine(children: Any, what: str) -> tuple[int, int]:
    """Expanded size and depth of a collection from its children's (size, depth)."""
    size, depth = 1, 0
    for child_size, child_depth in children:
        size += child_size
        depth = max(depth, child_depth)
    if size > MAX_NODES:
        raise _too_big(what)
    if depth + 1 > MAX_DEPTH:
        raise _too_deep(what)
    return size, depth + 1


# ----------------------------------------------------------------------------- JSON
def _load_json(data: bytes | str, what: str) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson stops at 1024 levels
            raise _too_deep(what) from None
        raise _invalid(what, "json", exc) from None
    check_budget(value, what)
    return value


# ----------------------------------------------------------------------------- YAML
class _BudgetedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts depth, nodes and aliases as it goes."""

    def __init__(self, stream: bytes | str, what: str) -> None:
        super().__init__(stream)
        self.what = what
        self.depth = 0
        self.nodes = 0
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _over(self.what, "MAX_ALIASES", MAX_ALIASES, f"uses more than {MAX_ALIASES} aliases")
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _too_big(self.what)
        if not self.check_event(SequenceStartEvent, MappingStartEvent):
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _too_deep(self.what)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _load_yaml(data: bytes | str, what: str) -> Any:
    loader = _BudgetedLoader(data, what)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _invalid(what, "yaml", exc) from None
        if node is None:
            return None
        _check_node_graph(node, what)
        try:
            value = loader.construct_document(node)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # ValueError: a 5000-digit int, 2024-02-30
            raise _invalid(what, "yaml", exc) from None
    finally:
        loader.dispose()
    return _unshared(value)


def _check_node_graph(root: Node, what: str) -> None:
    """Tags, keys, cycles, expanded size and depth of a composed YAML graph, each node once."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            sizes[key] = _combine((sizes[id(c)] for c in children), what)
            on_path.discard(key)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError(f"{what} has an alias inside its own anchor (a cycle)", budget="cycle")
        if node.tag not in SAFE_TAGS:
            raise SpecError(
                f"{what} uses the YAML tag {node.tag[:100]!r} at line {node.start_mark.line + 1}: only plain "
                "null, bool, int, float, string, timestamp, sequence and mapping values are accepted",
                budget="tags",
            )
        if isinstance(node, ScalarNode):
            sizes[key] = (1, 0)
            continue
        if isinstance(node, MappingNode):
            for key_node, _ in node.value:
                if not (isinstance(key_node, ScalarNode) and key_node.tag in (_STR, _MERGE)):
                    raise SpecError(
                        f"{what} has a mapping key that is not a string at line {key_node.start_mark.line + 1} "
                        "(quote it: keys are strings, as in JSON)",
                        budget="keys",
                    )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _unshared(value: Any) -> Any:
    """A copy in which aliased containers are separate objects (depth and size are checked)."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value
