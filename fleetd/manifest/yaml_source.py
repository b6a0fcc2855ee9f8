"""YAML text -> plain Python data plus a map from every field path to its line and column.

pyyaml's composer gives a node tree with positions; we build the data from it ourselves so that we can
reject what the default loader silently accepts (duplicate keys, which keep the last value; non-string keys
such as a bare ``on:`` read as a boolean; unknown tags) and remember where each value stood. Aliases are
followed, with a cap on the expanded size so that an alias bomb is an error rather than an outage.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from fleetd.core.diagnostics import Diagnostic, FieldPath, PathPart, Severity, SourceLocation

MAX_EXPANDED_VALUES = 1_000_000
MAX_DEPTH = 64

_COMPOSE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a field path's key and value stand (1-based), and the scalar's source text when it is one."""

    value_line: int
    value_column: int
    key_line: int | None = None
    key_column: int | None = None
    scalar_text: str | None = None
    plain_scalar: bool = False
    inline: bool = True
    """A scalar or a flow collection (``{a: 1}``), written where it starts; block collections are not."""


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Positions of one file's field paths."""

    file: str
    positions: dict[FieldPath, Position] = field(default_factory=dict)

    def locate(self, path: FieldPath, *, at_key: bool = False) -> SourceLocation:
        """The closest known position of ``path``: its value when written inline, else its key.

        Walks up the path when it is not in the file (a missing field is reported where its parent stands).
        """
        for end in range(len(path), -1, -1):
            pos = self.positions.get(path[:end])
            if pos is None:
                continue
            use_key = pos.key_line is not None and (at_key or not pos.inline or end < len(path))
            if use_key and pos.key_line is not None and pos.key_column is not None:
                return SourceLocation(self.file, pos.key_line, pos.key_column)
            return SourceLocation(self.file, pos.value_line, pos.value_column)
        return SourceLocation(self.file, 1, 1)

    def position(self, path: FieldPath) -> Position | None:
        return self.positions.get(path)


@dataclass(frozen=True, slots=True)
class ParsedYaml:
    data: Any
    source: SourceMap


class _Abort(Exception):
    """Stops construction when the document is too large or too deep; carries the diagnostic."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def parse_yaml(text: str, file: str) -> tuple[ParsedYaml | None, list[Diagnostic]]:
    """Parse one YAML document. Returns the data and its source map, or ``None`` and the diagnostics."""
    try:
        documents = list(yaml.compose_all(text, Loader=_COMPOSE_LOADER))
    except yaml.MarkedYAMLError as exc:
        return None, [_syntax_diagnostic(exc, file, text)]
    except yaml.YAMLError as exc:  # pragma: no cover - every parser error we know of carries a mark
        return None, [Diagnostic(Severity.ERROR, f"YAML error: {exc}", (), SourceLocation(file, 1, 1))]
    documents = [d for d in documents if d is not None]
    if not documents:
        return None, [
            Diagnostic(
                Severity.ERROR,
                "the file is empty; a manifest starts with `version: 1`",
                (),
                SourceLocation(file, 1, 1),
            )
        ]
    if len(documents) > 1:
        second = documents[1].start_mark
        return None, [
            Diagnostic(
                Severity.ERROR,
                "a manifest file holds one YAML document; split the others into their own files (found a second "
                "document after `---`)",
                (),
                SourceLocation(file, second.line + 1, second.column + 1),
            )
        ]
    too_large = _expansion_problem(documents[0], file)
    if too_large is not None:
        return None, [too_large]
    builder = _Builder(file)
    try:
        data = builder.build(documents[0], (), None, 0)
    except _Abort as abort:
        return None, [abort.diagnostic]
    if builder.diagnostics:
        return None, builder.diagnostics
    return ParsedYaml(data, SourceMap(file, builder.positions)), []


class _Builder:
    """Builds plain data from a composed node tree, recording positions and collecting problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[FieldPath, Position] = {}
        self.diagnostics: list[Diagnostic] = []
        self.count = 0
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: FieldPath, key_node: yaml.Node | None, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_EXPANDED_VALUES:
            raise _Abort(
                self._error(
                    node,
                    path,
                    f"the document expands to more than {MAX_EXPANDED_VALUES:,} "
                    "values (through aliases?); refusing to read it",
                )
            )
        if depth > MAX_DEPTH:
            raise _Abort(self._error(node, path, f"nesting deeper than {MAX_DEPTH} levels; refusing to read it"))
        self._record(node, path, key_node)
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _COLLECTION_TAGS:  # !!set, !!omap, !foo {}
            self.diagnostics.append(self._unsupported_tag(node, path))
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), None, depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _record(self, node: yaml.Node, path: FieldPath, key_node: yaml.Node | None) -> None:
        if path in self.positions:  # merged in through `<<`; the explicit key recorded first wins
            return
        is_scalar = isinstance(node, yaml.ScalarNode)
        style = node.style if isinstance(node, yaml.ScalarNode) else None
        inline = is_scalar or bool(getattr(node, "flow_style", False))
        self.positions[path] = Position(
            value_line=node.start_mark.line + 1,
            value_column=node.start_mark.column + 1,
            key_line=key_node.start_mark.line + 1 if key_node is not None else None,
            key_column=key_node.start_mark.column + 1 if key_node is not None else None,
            scalar_text=str(node.value) if is_scalar else None,
            plain_scalar=is_scalar and style in (None, ""),
            inline=inline,
        )

    def _mapping(self, node: yaml.MappingNode, path: FieldPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            if key in first_seen:
                self.diagnostics.append(
                    self._error(
                        key_node,
                        (*path, key),
                        f"duplicate key {key!r} (first defined on line {first_seen[key]}); a YAML mapping may "
                        "define a key once",
                    )
                )
                continue
            first_seen[key] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key), key_node, depth + 1)
        for merge_node in merges:
            self._merge_into(result, merge_node, path, depth)
        return result

    def _merge_into(self, result: dict[str, Any], merge_node: yaml.Node, path: FieldPath, depth: int) -> None:
        sources = merge_node.value if isinstance(merge_node, yaml.SequenceNode) else [merge_node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.diagnostics.append(self._error(source, path, "`<<` merges a mapping or a list of mappings"))
                continue
            for key_node, value_node in source.value:
                key = self._key(key_node, path)
                if key is not None and key not in result:
                    result[key] = self.build(value_node, (*path, key), key_node, depth + 1)

    def _key(self, key_node: yaml.Node, path: FieldPath) -> str | None:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG:
            return str(key_node.value)
        if isinstance(key_node, yaml.ScalarNode):
            text = str(key_node.value)
            self.diagnostics.append(
                self._error(
                    key_node,
                    (*path, text),
                    f'key {text!r} is read by YAML as a {_tag_word(key_node.tag)}, not a string; quote it: "{text}"',
                )
            )
            return None
        self.diagnostics.append(self._error(key_node, path, "mapping keys must be plain strings"))
        return None

    def _scalar(self, node: yaml.Node, path: FieldPath) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.diagnostics.append(self._unsupported_tag(node, path))
            return None
        construct: Callable[[yaml.constructor.SafeConstructor, yaml.Node], Any] = (
            yaml.constructor.SafeConstructor.yaml_constructors[node.tag]
        )
        try:
            value = construct(self._scalars, node)
        except (ValueError, yaml.constructor.ConstructorError) as exc:
            self.diagnostics.append(self._error(node, path, f"cannot read {node.value!r}: {exc}"))
            return None
        if isinstance(value, datetime.date):  # YAML 1.1 timestamps: keep the text, the schema decides
            return str(node.value)
        return value

    def _unsupported_tag(self, node: yaml.Node, path: FieldPath) -> Diagnostic:
        return self._error(node, path, f"unsupported YAML tag {node.tag!r}; a manifest uses plain values")

    def _error(self, node: yaml.Node, path: FieldPath, message: str) -> Diagnostic:
        return Diagnostic(
            Severity.ERROR,
            message,
            path,
            SourceLocation(self.file, node.start_mark.line + 1, node.start_mark.column + 1),
        )


def _expansion_problem(root: yaml.Node, file: str) -> Diagnostic | None:
    """Refuse an alias bomb before building it, pointing at the entry that expands too far.

    Aliases share nodes in the composed tree, so measuring each node once (memoized by identity) takes time
    linear in the text while the expansion may be exponential; a recursive alias (``&a [*a]``) is infinite.
    """
    sizes: dict[int, float] = {}
    if _expanded_size(root, sizes, set(), 0) <= MAX_EXPANDED_VALUES:
        return None
    node, where = root, root
    path: FieldPath = ()
    visited = {id(root)}
    descended = True
    while descended and len(path) <= MAX_DEPTH:
        descended = False
        for part, key_node, child in _children(node):
            if key_node is not None and key_node.tag == _MERGE_TAG:
                continue
            if id(child) not in visited and sizes.get(id(child), 0) > MAX_EXPANDED_VALUES:
                node, path, where = child, (*path, part), key_node or child
                visited.add(id(child))
                descended = True
                break
    return Diagnostic(
        Severity.ERROR,
        f"the document expands to more than {MAX_EXPANDED_VALUES:,} values (through aliases?); refusing to read it",
        path,
        SourceLocation(file, where.start_mark.line + 1, where.start_mark.column + 1),
    )


def _expanded_size(node: yaml.Node, sizes: dict[int, float], active: set[int], depth: int) -> float:
    """How many values ``node`` builds into, counting every use of a shared node; stops once over the cap."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in active:
        return math.inf
    if depth > MAX_DEPTH or isinstance(node, yaml.ScalarNode):
        return 1  # too deep: the builder refuses it with its own message
    active.add(id(node))
    total = 1.0
    for _, _, child in _children(node):
        total += _expanded_size(child, sizes, active, depth + 1)
        if total > MAX_EXPANDED_VALUES:
            break
    active.discard(id(node))
    sizes[id(node)] = total
    return total


def _children(node: yaml.Node) -> list[tuple[PathPart, yaml.Node | None, yaml.Node]]:
    """A collection's values with their path parts and key nodes (merge keys included, as ``<<``)."""
    if isinstance(node, yaml.MappingNode):
        return [(str(key.value), key, value) for key, value in node.value]
    if isinstance(node, yaml.SequenceNode):
        return [(i, None, item) for i, item in enumerate(node.value)]
    return []


def _tag_word(tag: str) -> str:
    return {
        "tag:yaml.org,2002:bool": "boolean",
        "tag:yaml.org,2002:int": "number",
        "tag:yaml.org,2002:float": "number",
        "tag:yaml.org,2002:null": "null",
        "tag:yaml.org,2002:timestamp": "date",
    }.get(tag, tag)


def _syntax_diagnostic(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    column = mark.column + 1 if mark is not None else 1
    problem = exc.problem or "invalid YAML"
    context = f" ({exc.context}, line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    hint = "; YAML indents with spaces, not tabs" if "\t" in source_line[: column + 1] else ""
    return Diagnostic(
        Severity.ERROR, f"YAML syntax error: {problem}{context}{hint}", (), SourceLocation(file, line, column)
    )
