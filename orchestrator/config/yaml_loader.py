"""Load YAML configuration files and report every problem at ``file:line:col``.

Pydantic reports where a value is wrong as a tuple path (``("devices", 2,
"port")``) into the parsed data, but the parsed data no longer knows which
line it came from. This module keeps the YAML start mark of every mapping key
and every node, keyed by that same tuple path, so each validation error can be
pointed back at the line the user has to edit. It also turns the things PyYAML
silently accepts but a user never means (duplicate keys) into errors.
"""

from __future__ import annotations

import difflib
import os
import stat
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import ConfigError, ConfigProblem

#: One step in a path into parsed data: a mapping key or a list index.
LocPart = str | int
#: A path into parsed data, the same shape pydantic uses for error locations.
Loc = tuple[Any, ...]

ModelT = TypeVar("ModelT", bound=BaseModel)

#: Longest rendering of a user value inside an error message; keeps a pasted
#: blob (or a hostile string) from flooding the terminal.
_MAX_VALUE_REPR = 80
#: Most values a file may hold once aliases are expanded. Real inventories and
#: sweeps hold a few thousand at most; the cap stops an alias bomb (a few
#: lines that expand to billions of values) from stalling validation.
MAX_EXPANDED_NODES = 200_000
#: Largest configuration file read, in bytes (4 MiB). Real inventories and
#: sweeps are a few KiB (the examples are under 2 KiB; a thousand-device
#: inventory is about 150 KiB). The cap is checked before reading, so a huge
#: file is refused at once instead of after minutes of parsing and gigabytes
#: of memory. Documented in docs/inventory.md and docs/sweeps.md.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Most nodes (values, keys, aliases) one file may hold as written. Counted
#: while composing, so a file of a million tiny entries stops early; the
#: alias-expanded count is bounded by ``MAX_EXPANDED_NODES`` afterwards.
MAX_NODES = MAX_EXPANDED_NODES


class LocatedValueError(ValueError):
    """A ``ValueError`` a validator raises to point below the value it validates.

    A model validator only knows its own location (``devices[3]``), but the
    useful line is often a field inside it (``devices[3].host``) or another
    entry altogether (the second of two duplicate names). ``at`` is that path,
    relative to the validated value; ``validate`` appends it to pydantic's
    location before looking the line up. ``LocatedValueError.many`` carries
    several such problems at once, so a user sees all of them in one run.
    """

    def __init__(self, message: str, at: Sequence[LocPart] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at: Loc = tuple(at)
        self.items: list[tuple[Loc, str]] = [(self.at, message)]

    @classmethod
    def many(cls, items: Sequence[tuple[Sequence[LocPart], str]]) -> LocatedValueError:
        """One error carrying several ``(at, message)`` problems (at least one)."""
        if not items:
            raise ValueError("LocatedValueError.many needs at least one item")
        first_at, first_message = items[0]
        err = cls(first_message, first_at)
        err.items = [(tuple(at), message) for at, message in items]
        return err


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in a file."""

    line: int
    column: int


@dataclass
class LoadedYaml:
    """A parsed YAML file plus where each of its keys and values starts.

    ``key_marks`` holds, for a path ending in a mapping key, where that key is
    written; ``value_marks`` holds where the node at a path starts. Errors
    prefer the key's position (``port: abc`` is reported at ``port``), which is
    what a user scans for.
    """

    path: str
    data: dict[str, Any]
    key_marks: dict[Loc, Mark] = field(default_factory=dict)
    value_marks: dict[Loc, Mark] = field(default_factory=dict)

    def locate(self, loc: Sequence[Any]) -> Mark | None:
        """Return the mark of ``loc`` or of its nearest ancestor that has one.

        Falling back to an ancestor is what makes a missing field land on the
        mapping that lacks it, and a pydantic-internal location segment (not a
        key of the data) land on the value it concerns.
        """
        loc = tuple(loc)
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            if prefix in self.key_marks:
                return self.key_marks[prefix]
            if prefix in self.value_marks:
                return self.value_marks[prefix]
        return None

    def problem(self, loc: Sequence[Any], message: str) -> ConfigProblem:
        """Build a ``ConfigProblem`` for ``loc`` in this file."""
        mark = self.locate(loc)
        return ConfigProblem(
            path=self.path,
            line=mark.line if mark else None,
            column=mark.column if mark else None,
            key_path=format_loc(loc),
            message=message,
        )


def problem_at(loaded: LoadedYaml | None, loc: Sequence[Any], message: str) -> ConfigProblem:
    """A problem at ``loc`` of ``loaded``, or with a key path only when there is no file."""
    if loaded is not None:
        return loaded.problem(loc, message)
    return ConfigProblem(
        path=None, line=None, column=None, key_path=format_loc(loc), message=message
    )


def format_loc(loc: Iterable[Any]) -> str:
    """Render a location the way a user writes it: ``devices[2].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def short_repr(value: object) -> str:
    """``repr`` capped at a readable length, for quoting user input in messages."""
    text = repr(value)
    if len(text) > _MAX_VALUE_REPR:
        text = text[: _MAX_VALUE_REPR - 3] + "..."
    return text


def _mark(yaml_mark: yaml.Mark) -> Mark:
    return Mark(line=yaml_mark.line + 1, column=yaml_mark.column + 1)


@dataclass(frozen=True)
class _Duplicate:
    """A key written twice in one mapping (found while constructing, located later)."""

    mapping: yaml.MappingNode
    key: Any
    key_node: yaml.Node
    first_line: int


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that notes duplicate mapping keys.

    PyYAML keeps the last of two equal keys, so a copy-pasted ``port:`` would
    silently override the first one; in a benchmark inventory that means
    measuring the wrong machine. Duplicates are only noted here and reported
    by ``load_yaml`` once the mark walk knows their key path. Merge keys
    (``<<: *base``) may still be overridden, as YAML intends: the check runs
    on the mapping's own entries, before merged ones are flattened in.
    """

    def __init__(self, stream: str, path: str = "") -> None:
        super().__init__(stream)
        self.duplicates: list[_Duplicate] = []
        self.path = path
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose as PyYAML does, refusing the file once it holds ``MAX_NODES`` nodes.

        Composing keeps every node in memory at Python-object size (hundreds
        of bytes each), so the count stops a file of countless tiny entries
        before it costs minutes and gigabytes, whatever its byte size.
        """
        self.nodes += 1
        if self.nodes > MAX_NODES:
            mark = _mark(self.peek_event().start_mark)
            raise ConfigError(
                f"file holds more than {MAX_NODES} values; configuration files are far "
                "smaller (split it, or it is not a configuration file)",
                path=self.path, line=mark.line, column=mark.column,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    self.duplicates.append(
                        _Duplicate(node, key, key_node, first.start_mark.line + 1)
                    )
                else:
                    seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _record_marks(loader: _Loader, root: yaml.Node, loaded: LoadedYaml) -> list[ConfigProblem]:
    """Walk the (already constructed) node tree and record marks by data path.

    Each node is entered once: a node reached again through an alias keeps the
    marks of its first occurrence and later paths fall back to the alias's
    parent. That bounds the walk by the file size even for alias bombs.
    Returns the duplicate-key problems, now that their paths are known.
    """
    duplicates: dict[int, list[_Duplicate]] = {}
    for dup in loader.duplicates:
        duplicates.setdefault(id(dup.mapping), []).append(dup)
    problems: list[ConfigProblem] = []
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        loaded.value_marks.setdefault(loc, _mark(node.start_mark))
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for dup in duplicates.get(id(node), []):
                m = _mark(dup.key_node.start_mark)
                problems.append(
                    ConfigProblem(
                        path=loaded.path,
                        line=m.line,
                        column=m.column,
                        key_path=format_loc((*loc, dup.key)),
                        message=f"duplicate key {short_repr(dup.key)} "
                        f"(first defined at line {dup.first_line})",
                    )
                )
            for key_node, value_node in node.value:
                try:
                    key = loader.construct_object(key_node, deep=True)
                    hash(key)
                except (yaml.YAMLError, TypeError):
                    continue
                child = (*loc, key)
                # Plain assignment: after merge-key flattening a later entry
                # overrides an earlier one, exactly as in the parsed data.
                loaded.key_marks[child] = _mark(key_node.start_mark)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, (*loc, index)))
    return problems


class _RecursiveAlias(Exception):
    """A node contains itself through an alias (``&a [*a]``)."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__("recursive alias")
        self.node = node


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes the document holds with aliases expanded, counting stops past ``limit``.

    Memoized per node, so it runs in time linear in the file, not in the
    expansion. Raises ``_RecursiveAlias`` for a node that contains itself:
    no configuration value is infinite, and validators would recurse forever.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise _RecursiveAlias(node)
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > limit:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item)
                if total > limit:
                    break
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _position(text: str, index: int) -> Mark:
    """The 1-based line and column of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return Mark(line=line, column=index - (text.rfind("\n", 0, index) + 1) + 1)


def _yaml_error(path: str, exc: yaml.YAMLError, text: str = "") -> ConfigError:
    """Turn a PyYAML error into a ConfigError at the line PyYAML blames.

    A ``ReaderError`` (a NUL byte or other character YAML does not allow) has
    no mark, only a character index into the text; it is turned into
    line:col here so the user can find an invisible character.
    """
    if isinstance(exc, yaml.reader.ReaderError):
        m = _position(text, exc.position)
        return ConfigError(
            f"character U+{exc.character:04X} is not allowed in YAML (control characters "
            "and NUL bytes are refused; is this a binary file?)",
            path=path, line=m.line, column=m.column,
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        message = ": ".join(parts) or "invalid YAML"
        if mark is not None:
            m = _mark(mark)
            return ConfigError(message, path=path, line=m.line, column=m.column)
        return ConfigError(message, path=path)
    return ConfigError(f"invalid YAML: {exc}", path=path)


def load_yaml(path: str | os.PathLike[str]) -> LoadedYaml:
    """Read and parse one configuration file whose top level must be a mapping.

    Every failure (missing or unreadable file, bad encoding, YAML syntax,
    duplicate keys, empty file, wrong top-level type) becomes a
    ``ConfigError`` that names the file, with a line and column whenever the
    problem has one.
    """
    shown = os.fspath(path)
    try:
        # Checked before opening: opening a FIFO blocks until a writer comes,
        # and /dev/zero or /dev/urandom never end.
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError("is a directory, expected a YAML file", path=shown)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"is not a regular file ({_file_kind(info.st_mode)}), expected a YAML file",
                path=shown,
            )
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(_too_big(info.st_size), path=shown)
        with Path(path).open("rb") as handle:
            # One byte past the cap catches a file that grew since the stat.
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", path=shown) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", path=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", path=shown) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(_too_big(len(raw)), path=shown)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            "file is not valid UTF-8", path=shown, line=line, column=column
        ) from None

    try:
        # PyYAML checks the whole text for unprintable characters right here.
        loader = _Loader(text, shown)
    except yaml.YAMLError as exc:
        raise _yaml_error(shown, exc, text) from None
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, MAX_EXPANDED_NODES) > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"file expands to more than {MAX_EXPANDED_NODES} values (alias bomb?)",
                path=shown,
            )
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(shown, exc, text) from None
    except _RecursiveAlias as exc:
        m = _mark(exc.node.start_mark)
        raise ConfigError(
            "recursive alias: this value contains itself",
            path=shown,
            line=m.line,
            column=m.column,
        ) from None
    except RecursionError:
        raise ConfigError("YAML nesting is too deep", path=shown) from None
    finally:
        loader.dispose()

    if node is None or data is None:
        raise ConfigError("file is empty; expected a YAML mapping", path=shown)
    if not isinstance(data, dict):
        m = _mark(node.start_mark)
        raise ConfigError(
            f"top level must be a mapping of keys to values, found {yaml_type_name(data)}",
            path=shown,
            line=m.line,
            column=m.column,
        )
    loaded = LoadedYaml(path=shown, data=data)
    duplicates = _record_marks(loader, node, loaded)
    if duplicates:
        raise ConfigError.from_problems(duplicates)
    return loaded


def _too_big(size: int) -> str:
    return (f"file is {size} bytes, more than the {MAX_FILE_BYTES // (1024 * 1024)} MiB "
            "a configuration file may have")


def _file_kind(mode: int) -> str:
    """Name a non-regular file's type for the refusal message."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def yaml_type_name(value: object) -> str:
    """Name a parsed value's type in YAML terms, for messages users understand."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types hiding in an annotation (``Optional``, ``Annotated``, unions)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _model_at(model_cls: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc``, if it can be resolved.

    Used only to list the allowed keys when an unknown key is found; it
    follows model fields, list items and mapping values.
    """
    current: list[Any] = [model_cls]
    for part in loc:
        following: list[Any] = []
        for candidate in current:
            for typ in _unwrap(candidate):
                if isinstance(typ, type) and issubclass(typ, BaseModel):
                    info = typ.model_fields.get(part) if isinstance(part, str) else None
                    if info is not None:
                        following.append(info.annotation)
                    continue
                origin = typing.get_origin(typ)
                args = typing.get_args(typ)
                if origin in (list, tuple, Sequence) and isinstance(part, int) and args:
                    following.append(args[0])
                elif origin is dict and len(args) == 2:
                    following.append(args[1])
        current = following
        if not current:
            return None
    for candidate in current:
        for typ in _unwrap(candidate):
            if isinstance(typ, type) and issubclass(typ, BaseModel):
                return typ
    return None


def _unknown_key_message(model_cls: type[BaseModel], loc: Sequence[Any]) -> str:
    key = loc[-1] if loc else "?"
    owner = _model_at(model_cls, loc[:-1])
    message = f"unknown key {short_repr(key)}"
    if owner is not None:
        allowed = sorted(owner.model_fields)
        close = difflib.get_close_matches(str(key), allowed, n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        message += f" (allowed keys: {', '.join(allowed)})"
    return message


def _problem_messages(model_cls: type[BaseModel], error: Any) -> list[tuple[Loc, str]]:
    """The locations and user-facing messages of one pydantic error entry.

    Pydantic's own wording is kept where it is already clear ("Input should be
    a valid integer"); entries that would leak Python class names or say
    nothing about what is allowed are reworded. A ``LocatedValueError`` may
    expand into several problems.
    """
    loc: Loc = tuple(error["loc"])
    if loc and loc[-1] == "[key]":
        # pydantic marks an invalid mapping key with a trailing "[key]"; the
        # key itself is what the path names, and its mark is the key's.
        loc = loc[:-1]
    kind = error["type"]
    message = str(error["msg"])
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, LocatedValueError):
        return [((*loc, *at), msg) for at, msg in cause.items]
    if kind == "missing":
        return [(loc, "field required")]
    if kind == "extra_forbidden":
        return [(loc, _unknown_key_message(model_cls, loc))]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        found = yaml_type_name(error["input"])
        return [(loc, f"expected a mapping of keys to values, found {found}")]
    if kind == "list_type":
        return [(loc, f"expected a list, found {yaml_type_name(error['input'])}")]
    if kind == "literal_error":
        value = short_repr(error["input"])
        return [(loc, f"unknown value {value}; expected {ctx.get('expected', '?')}")]
    if kind == "string_type" and isinstance(error["input"], int | float):
        # YAML turned ``12.2``, ``8`` or ``yes`` into a number or boolean.
        found = yaml_type_name(error["input"])
        return [(loc, f"{message}, found {found}; put the value in quotes")]
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return [(loc, message)]


def problems_from_validation_error(
    model_cls: type[BaseModel], exc: ValidationError, loaded: LoadedYaml | None
) -> list[ConfigProblem]:
    """Convert every entry of a ``ValidationError`` into a located ``ConfigProblem``.

    With ``loaded`` of ``None`` (a model built from data, not a file) the
    problems carry key paths only.
    """
    problems: list[ConfigProblem] = []
    for error in exc.errors():
        for loc, message in _problem_messages(model_cls, error):
            problems.append(problem_at(loaded, user_loc(loc), message))
    return problems


def user_loc(loc: Sequence[Any]) -> tuple[Any, ...]:
    """``loc`` without the tags of discriminated unions (written ``<name>``).

    A field that takes one of two shapes (``repetitions: 12`` or
    ``repetitions: {min, max, target_ci_pct}``) is a union whose members are
    tagged ``<count>``/``<adaptive>``; pydantic puts the tag in the location,
    but the user's file has no such key.
    """
    return tuple(p for p in loc
                 if not (isinstance(p, str) and p.startswith("<") and p.endswith(">")))


def validate_loaded(model_cls: type[ModelT], loaded: LoadedYaml) -> ModelT:
    """Validate already-parsed YAML against ``model_cls``, raising a located ConfigError."""
    try:
        return model_cls.model_validate(loaded.data)
    except ValidationError as exc:
        raise ConfigError.from_problems(
            problems_from_validation_error(model_cls, exc, loaded)
        ) from None


def validate(model_cls: type[ModelT], path: str | os.PathLike[str]) -> ModelT:
    """Load ``path`` and validate it as ``model_cls``; every problem carries file:line:col."""
    return validate_loaded(model_cls, load_yaml(path))
