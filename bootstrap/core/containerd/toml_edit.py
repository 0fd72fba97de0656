"""Format-preserving TOML edits that are checked before anyone sees them.

tomlkit keeps comments, key order and layout, but some of its edits go wrong on legal
layouts (a table added under a table that was defined by dotted keys lands in the wrong
place), and it cannot parse some legal layouts at all (tables defined out of order). So
every edit here is made twice over: on the tomlkit document, and on a plain dict (the model
of what the result must mean). The rendered text is parsed again with a strict TOML parser
and must equal the model, and tomlkit must be able to read it again. If the natural edit
fails that check, the edit is replayed with new tables written inline, then with new
tables appended at the end of the file under their full header path, each checked again.
A file tomlkit cannot parse can still receive new tables appended as text. Nothing
unchecked is ever returned, and a file that needs no change is returned byte for byte.
"""

from __future__ import annotations

import copy
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT, Comment, InlineTable, Item, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

from gpunode.bootstrap.core.containerd.schema import ConfigStructureError, TomlSyntaxError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KeyPath = tuple[str, ...]
_POSITION = re.compile(r"^(?P<reason>.*?)\s*\((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$")


def load_strict(text: str, path: str) -> dict[str, Any]:
    """Parse with a strict TOML 1.0 parser; a syntax error names the file, line and column."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _POSITION.match(message)
        if match is None:
            raise TomlSyntaxError(path, None, None, message) from None
        line = int(match["line"]) if match["line"] else None
        col = int(match["col"]) if match["col"] else None
        raise TomlSyntaxError(path, line, col, match["reason"]) from None


def load_document(text: str, path: str) -> TOMLDocument:
    """The editable document; the text must first pass the strict parser."""
    load_strict(text, path)
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.TOMLKitError as exc:  # valid TOML that tomlkit cannot hold
        raise ConfigStructureError(
            f"{path} is valid TOML, but gpunode cannot edit it without losing its layout ({exc}).",
            fix="use the drop-in mode (the default), which leaves this file's layout alone, "
            "or simplify the file's table layout.",
        ) from None


def strictly_equal(left: object, right: object) -> bool:
    """Equality that tells `true` from `1` and `1.0` from `1`, as TOML does."""
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(strictly_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(strictly_equal(a, b) for a, b in zip(left, right))
    return type(left) is type(right) and left == right


def lookup(data: Mapping[str, Any], path: KeyPath) -> Any:
    """The value at `path` in plain data, or None."""
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, Item):
        return value.unwrap()
    return copy.deepcopy(value)


def _table_item(mapping: Mapping[str, Any]) -> Table:
    """A tomlkit table for plain data; tables that hold only tables print no header of their own."""
    only_tables = bool(mapping) and all(isinstance(v, Mapping) for v in mapping.values())
    table = tomlkit.table(is_super_table=only_tables)
    for key, value in mapping.items():
        table.append(key, _table_item(value) if isinstance(value, Mapping) else tomlkit.item(value))
    return table


def _inline_item(mapping: Mapping[str, Any]) -> InlineTable:
    table = tomlkit.inline_table()
    for key, value in mapping.items():
        table.append(key, _inline_item(value) if isinstance(value, Mapping) else tomlkit.item(value))
    return table


def _indent_of(item: Item) -> int:
    return len(item.trivia.indent.rsplit("\n", 1)[-1])


def _layout(document: TOMLDocument) -> tuple[int, int]:
    """How the file indents: (spaces per enclosing header, spaces from a header to its keys).

    `containerd config default` indents each table two spaces per enclosing table header
    and its keys two more; hand-written files mostly indent nothing. New tables follow the
    file's habit.
    """
    steps: Counter[int] = Counter()
    offsets: Counter[int] = Counter()

    def walk(body: Iterable[tuple[Any, Item]], headers: int) -> None:
        for _key, item in body:
            if not isinstance(item, Table):
                continue
            if not item.is_super_table():
                header = _indent_of(item)
                if headers > 0 and header % headers == 0:
                    steps[header // headers] += 1
                for _k, value in item.value.body:
                    if not isinstance(value, (Table, AoT, Whitespace, Comment)):
                        offsets[_indent_of(value) - header] += 1
                        break
            walk(item.value.body, headers + (0 if item.is_super_table() else 1))

    walk(document.body, 0)
    step = steps.most_common(1)[0][0] if steps else 0
    offset = offsets.most_common(1)[0][0] if offsets else 0
    return step, max(offset, 0)


def _indent_new(table: Table, headers: int, layout: tuple[int, int], *, top: bool = True) -> None:
    """Indent a newly inserted table like the file's own, with blank lines around it.

    A blank line goes before each new header (tomlkit already put one before the inserted
    table if none preceded it). A super table prints no header, only its blank line, so
    its first child gets none of its own.
    """
    step, offset = layout
    header = step * headers
    blank = table.trivia.indent.startswith("\n") or not top
    table.trivia.indent = ("\n" if blank else "") + ("" if table.is_super_table() else " " * header)
    inner = headers + (0 if table.is_super_table() else 1)
    for index, (_key, item) in enumerate(table.value.body):
        if isinstance(item, Table):
            _indent_new(item, inner, layout, top=table.is_super_table() and index == 0)
        elif not isinstance(item, (Whitespace, Comment, AoT)):
            item.trivia.indent = " " * (header + offset)


def _end_with_blank_line(table: Table) -> None:
    last = table
    while last.value.body and isinstance(last.value.body[-1][1], Table):
        last = last.value.body[-1][1]
    last.add(tomlkit.nl())


def _indent_like_siblings(parent: Any, key: str) -> None:
    """Give a new key/value the indentation of the values beside it."""
    body = parent.value.body if isinstance(parent, Table) else getattr(parent, "body", None)
    if body is None:
        return
    new = None
    sibling = None
    for item_key, item in body:
        if item_key is not None and item_key.key == key and not isinstance(item, Table):
            new = item
        elif sibling is None and not isinstance(item, (Table, AoT, Whitespace, Comment)):
            sibling = item
    if new is not None and sibling is not None:
        new.trivia.indent = sibling.trivia.indent.rsplit("\n", 1)[-1]


# How a new table below the top level is written, tried in this order until the result
# checks out: as a table where its parent is (the natural place, indented like the file);
# as an inline table (the only legal way under a table defined by dotted keys, and one
# tomlkit renders right); as a full-path header appended at the end of the file.
STRATEGIES = ("tables", "inline", "append")


class _NeedsParser(Exception):
    """An edit that only a parsed document can make, asked of a text-only editor."""


class TomlEditor:
    """Applies edits to a tomlkit document and to the plain model of the intended result.

    With no document (a file tomlkit cannot parse), only new tables can be written, appended
    at the end of the text; any other edit raises _NeedsParser.
    """

    def __init__(
        self, document: TOMLDocument | None, model: dict[str, Any], *, strategy: str, source: str = ""
    ) -> None:
        self.document = document
        self._source = source
        self.model = model
        self._original = copy.deepcopy(model)
        self._strategy = strategy if document is not None else "append"
        self._appended: list[tuple[KeyPath, dict[str, Any]]] = []
        self._layout = _layout(document) if document is not None else (0, 0)

    # -- reading -------------------------------------------------------------------------
    def get(self, path: KeyPath) -> Any:
        """The intended value at `path` (plain data), or None."""
        return lookup(self.model, path)

    def _node(self, path: KeyPath) -> Any:
        if self.document is None:
            raise _NeedsParser(path)
        node: Any = self.document
        for key in path:
            if not isinstance(node, MutableMapping) or key not in node:
                return None
            node = node[key]
        return node

    def _appended_home(self, path: KeyPath) -> tuple[dict[str, Any], KeyPath] | None:
        """The table appended earlier in this edit that `path` lies in, and the rest of the path."""
        for base, mapping in self._appended:
            if path[: len(base)] == base:
                return mapping, path[len(base) :]
        return None

    # -- writing -------------------------------------------------------------------------
    def set(self, path: KeyPath, value: Any) -> None:
        """Set a value (plain data; a mapping becomes a table)."""
        self._model_set(path, value)
        self._document_set(path, value)

    def set_if_different(self, path: KeyPath, value: Any) -> None:
        if not strictly_equal(self.get(path), value):
            self.set(path, value)

    def append(self, path: KeyPath, value: Any) -> None:
        """Append to an array (kept in its layout), or create a one-element array."""
        current = self.get(path)
        if not isinstance(current, list):
            self.set(path, [value])
            return
        current.append(copy.deepcopy(value))
        home = self._appended_home(path)
        if home is not None:
            mapping, rest = home
            lookup(mapping, rest).append(copy.deepcopy(value))
            return
        self._node(path).append(value)

    def delete(self, path: KeyPath) -> None:
        if lookup(self.model, path) is None:
            return
        parent = lookup(self.model, path[:-1])
        del parent[path[-1]]
        home = self._appended_home(path)
        if home is not None:
            mapping, rest = home
            del lookup(mapping, rest[:-1])[rest[-1]]
            return
        node = self._node(path[:-1])
        del node[path[-1]]

    def sync(self, path: KeyPath, desired: Mapping[str, Any], *, prune: bool) -> None:
        """Make the table at `path` hold `desired`, touching only what differs.

        With prune, keys the table has and `desired` lacks are removed; without, kept.
        """
        current = self.get(path)
        if not isinstance(current, Mapping):
            if current is not None:
                self.delete(path)
            self.set(path, dict(desired))
            return
        for key, value in desired.items():
            have = current.get(key)
            if isinstance(value, Mapping):
                if isinstance(have, Mapping):
                    self.sync((*path, key), value, prune=prune)
                else:
                    if have is not None:
                        self.delete((*path, key))
                    self.set((*path, key), dict(value))
            elif key not in current or not strictly_equal(have, value):
                self.set((*path, key), copy.deepcopy(value))
        if prune:
            for key in [k for k in current if k not in desired]:
                self.delete((*path, key))

    def _model_set(self, path: KeyPath, value: Any) -> None:
        node = self.model
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)

    def _document_set(self, path: KeyPath, value: Any) -> None:
        home = self._appended_home(path)
        if home is not None:
            mapping, rest = home
            node = mapping
            for key in rest[:-1]:
                node = node.setdefault(key, {})
            node[rest[-1]] = _plain(value)
            return
        if self.document is None:
            self._append_without_parser(path, value)
            return
        # The deepest existing ancestor decides how the new part is written.
        depth = len(path) - 1
        while depth > 0 and not isinstance(self._node(path[:depth]), MutableMapping):
            depth -= 1
        parent = self._node(path[:depth])
        missing = path[depth:]
        payload: Any = _plain(value)
        for key in reversed(missing[1:]):
            payload = {key: payload}
        key = missing[0]
        if isinstance(parent, InlineTable) or self._inside_inline(path[:depth]):
            parent[key] = _inline_item(payload) if isinstance(payload, Mapping) else tomlkit.item(payload)
        elif isinstance(payload, Mapping):
            if self._strategy == "append" and depth > 0 and key not in parent:
                self._appended.append(((*path[:depth], key), dict(payload)))
            elif self._strategy == "inline" and depth > 0:
                parent[key] = _inline_item(payload)
            else:
                table = _table_item(payload)
                parent[key] = table
                # After insertion: tomlkit adds the parent's indent to what it appends.
                _indent_new(table, self._headers_above(path[:depth]), self._layout)
                _end_with_blank_line(table)
        else:
            parent[key] = tomlkit.item(payload)
            _indent_like_siblings(parent, key)

    def _headers_above(self, path: KeyPath) -> int:
        """How many of the tables along `path` print a header of their own."""
        count = 0
        for depth in range(1, len(path) + 1):
            node = self._node(path[:depth])
            if not (isinstance(node, Table) and node.is_super_table()):
                count += 1
        return count

    def _append_without_parser(self, path: KeyPath, value: Any) -> None:
        depth = len(path) - 1
        while depth > 0 and not isinstance(lookup(self._original, path[:depth]), Mapping):
            depth -= 1
        if lookup(self._original, path[: depth + 1]) is not None:
            raise _NeedsParser(path)  # a value in an existing table: needs the parsed file
        payload: Any = _plain(value)
        for key in reversed(path[depth + 1 :]):
            payload = {key: payload}
        if not isinstance(payload, Mapping):
            raise _NeedsParser(path)
        self._appended.append((path[: depth + 1], dict(payload)))

    def _inside_inline(self, path: KeyPath) -> bool:
        return any(isinstance(self._node(path[:depth]), InlineTable) for depth in range(1, len(path) + 1))

    # -- result --------------------------------------------------------------------------
    def render(self) -> str:
        text = tomlkit.dumps(self.document) if self.document is not None else self._source
        for path, mapping in self._appended:
            fragment = tomlkit.document()
            holder: Any = fragment
            for key in path[:-1]:
                table = tomlkit.table(is_super_table=True)
                holder.append(key, table)
                holder = table
            holder.append(path[-1], _table_item(mapping))
            text = text.rstrip("\n") + "\n\n" + tomlkit.dumps(fragment)
        if text.endswith("\n\n") and not self._source.endswith("\n\n"):
            text = text.rstrip("\n") + "\n"
        return text


def edit_checked(
    text: str,
    path: str,
    model: dict[str, Any],
    edits: Callable[[TomlEditor], None],
) -> str:
    """Apply `edits` to `text` and return the new text, proven to mean the edited model.

    `model` is the strict parse of `text`. Raises ConfigStructureError when no way of writing the
    edit into this layout parses back to the intended data.
    """
    try:
        load_document(text, path)
    except ConfigStructureError as cannot_parse:
        return _edit_without_parser(text, model, edits, cannot_parse)
    failures: list[str] = []
    for strategy in STRATEGIES:
        editor = TomlEditor(load_document(text, path), copy.deepcopy(model), strategy=strategy, source=text)
        try:
            edits(editor)
            if strictly_equal(editor.model, model):
                return text  # nothing to change: the file stays byte for byte as it is
            rendered = editor.render()
        except tomlkit.exceptions.TOMLKitError as exc:
            # tomlkit parses some legal layouts (a table's sub-tables before it and after it)
            # but then cannot insert into them; the next strategy may write it differently.
            failures.append(f"{strategy}: tomlkit could not make the edit ({exc})")
            continue
        problem = check_rendering(rendered, editor.model)
        if problem is None:
            return rendered
        failures.append(f"{strategy}: {problem}")
    cannot_edit = ConfigStructureError(
        f"{path} is valid TOML, but gpunode cannot edit its table layout without risking its "
        f"meaning ({'; '.join(failures)}).",
        fix="use the drop-in mode (the default), which leaves this file's layout alone, "
        "or simplify the file's table layout (each table once, sub-tables after it).",
    )
    return _edit_without_parser(text, model, edits, cannot_edit)


def _edit_without_parser(
    text: str, model: dict[str, Any], edits: Callable[[TomlEditor], None], cannot_parse: ConfigStructureError
) -> str:
    """For valid TOML tomlkit cannot parse: new tables appended as text, or the parse error."""
    editor = TomlEditor(None, copy.deepcopy(model), strategy="append", source=text)
    try:
        edits(editor)
    except _NeedsParser:
        raise cannot_parse from None
    if strictly_equal(editor.model, model):
        return text
    rendered = editor.render()
    if check_rendering(rendered, editor.model, editable=False) is not None:
        raise cannot_parse
    return rendered


def check_rendering(rendered: str, model: Mapping[str, Any], *, editable: bool = True) -> str | None:
    """None when `rendered` is valid TOML meaning exactly `model` (and, if asked, editable again)."""
    try:
        reparsed = tomllib.loads(rendered)
    except tomllib.TOMLDecodeError as exc:
        return f"invalid TOML ({exc})"
    if not strictly_equal(reparsed, model):
        return "the text does not mean the intended content"
    if not editable:
        return None
    try:
        tomlkit.parse(rendered)
    except tomlkit.exceptions.TOMLKitError as exc:
        return f"the text could not be edited again ({exc})"
    return None


def insert_root_key(text: str, key: str, value: Any) -> str:
    """`key = value` added at the top level by plain text, for files tomlkit cannot hold.

    It goes after a top-level `version = N` line if there is one before the first table,
    else first in the file; the caller checks the result with check_rendering.
    """
    line = tomlkit.dumps({key: value})
    lines = text.splitlines(keepends=True)
    where = 0
    for index, current in enumerate(lines):
        stripped = current.strip()
        if stripped.startswith("["):
            break
        if re.match(r"^version\s*=\s*\d+\s*(#.*)?$", stripped):
            where = index + 1
            if not current.endswith("\n"):
                lines[index] = current + "\n"
            break
    lines.insert(where, line)
    return "".join(lines)
