"""Read a config file into plain Python data, safely and with bounded effort.

Input is bounded before and while it is parsed (docs/safety.md, rule 6), so that
``validate``, ``run`` and reload answer every file with one line within a second
and bounded memory:

* only a regular file is read: it is opened non-blocking (a FIFO with no writer
  cannot hang the open) and checked with ``fstat`` before any byte is read, so
  ``/dev/zero``, a FIFO, a socket or a directory is refused by what it is;
* at most :data:`MAX_CONFIG_BYTES` (1 MiB) are read; a larger file is refused
  from its size, one that grows while read is refused too;
* YAML aliases may expand to at most :data:`MAX_ALIAS_NODES` nodes in total (a
  "billion laughs" alias bomb is refused while it is composed, before anything is
  built), an alias may not refer to the collection that contains it, and
  collections may nest at most :data:`MAX_DEPTH` levels (``[[[[...`` cannot reach
  the interpreter's recursion limit), and a file holds at most :data:`MAX_NODES`
  values (a config has hundreds; this bounds the time a 1 MiB file can take).

``yaml.SafeLoader`` only builds plain types (no object construction); the
subclass here additionally rejects duplicate mapping keys, which plain
``yaml.safe_load`` silently resolves to the last one (two ``worker:`` roles would
quietly become one). Problems are raised as one-line :class:`ConfigError`.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Any, cast

import yaml

from .errors import ConfigError, Document, one_line

MAX_CONFIG_BYTES = 1024 * 1024
MAX_ALIAS_NODES = 20_000
MAX_NODES = 20_000
MAX_DEPTH = 100


if TYPE_CHECKING:
    class _ComposerBase(yaml.parser.Parser, yaml.composer.Composer):
        """What the mixin below finds in the loaders it is mixed into: a parser and a composer."""

        def peek_event(self) -> yaml.Event:  # untyped in types-PyYAML; an event once check_event said so
            ...
else:
    _ComposerBase = object  # at run time a plain mixin: the loaders bring both halves


class _BoundedComposer(_ComposerBase):
    """Composer half of the loaders below: bounds what aliases, nesting and the
    node count can cost (see the module docstring)."""

    def __init__(self) -> None:
        self._depth = 0
        self._alias_nodes = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._count_alias(cast("yaml.AliasEvent", self.peek_event()))  # check_event said so
            return super().compose_node(parent, index)
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"collections nested deeper than {MAX_DEPTH} levels", _mark(self.peek_event()))
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES} values in one file", _mark(self.peek_event()))
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
        return node

    def _count_alias(self, event: yaml.AliasEvent) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML reports the undefined alias itself
        size = self._sizes.get(id(target))
        if size is None:  # the anchored collection is still open: it would contain itself
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refers to a collection that contains it", _mark(event))
        self._alias_nodes += size
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)",
                _mark(event))


class _PyLoader(_BoundedComposer, yaml.SafeLoader):
    """Pure-Python SafeLoader, bounded (used where PyYAML lacks libyaml)."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        _BoundedComposer.__init__(self)

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        # bound flow nesting in the scanner: it looks ahead for simple keys, so a
        # line of 10^5 '[' costs seconds before the composer would see depth 101
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"collections nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(token_class)


_StrictSafeLoader: type[yaml.SafeLoader] = _PyLoader  # PyYAML built without libyaml: the Python parser
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, yaml.composer.Composer, yaml.constructor.SafeConstructor,
                   yaml.resolver.Resolver):
        """libyaml scans and parses (several times faster: a 1 MiB file is read in
        well under a second); composing stays in Python so the bounds apply."""

        get_single_node = yaml.composer.Composer.get_single_node  # not CParser's: it would skip the bounds
        compose_document = yaml.composer.Composer.compose_document

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            _BoundedComposer.__init__(self)

    # a SafeLoader in all but its parser (libyaml's), which yaml.load's type does not know
    _StrictSafeLoader = cast("type[yaml.SafeLoader]", _CLoader)


def _children(node: yaml.Node | None) -> list[yaml.Node] | tuple[()]:
    if isinstance(node, yaml.SequenceNode):
        items: list[yaml.Node] = node.value
        return items
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return ()


def _mark(event: yaml.Event) -> yaml.error.Mark | None:
    """Where ``event`` starts, for an error: libyaml's marks have the fields of PyYAML's
    (line, column, name), which is all an error reads, though the stubs name two classes."""
    return cast("yaml.error.Mark | None", event.start_mark)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may be overridden on purpose
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key such as a list: let the schema complain
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key!r} (first at line {first.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_LOADERS: set[type[yaml.SafeLoader]] = {_PyLoader, _StrictSafeLoader}
for _loader in _LOADERS:
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_document(path: str) -> Document:
    """Return the parsed document of ``path`` (never None).

    Raises ConfigError for a file that is not a regular file, is unreadable or too
    large, invalid YAML (with line and column), YAML beyond the bounds above, an
    empty file, or a document that is not a mapping."""
    text = _decode(path, read_bounded(path))
    try:
        document = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(path, exc)]) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        # a scalar that no Python value can hold, e.g. an int of 5000 digits or a 13th month
        raise ConfigError(path, [f"{path}: invalid YAML: {_short(str(exc) or type(exc).__name__)}"]) from None
    if document is None:
        raise ConfigError(path, [f"{path}: config file is empty (it needs at least 'cluster' and 'roles')"])
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else f"a {type(document).__name__}"
        raise ConfigError(path, [f"{path}: expected a mapping of keys at the top level, got {kind}"])
    return document


def read_bounded(path: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Never blocks on a FIFO and never reads more than ``limit + 1`` bytes; raises
    ConfigError (one line) for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot read config file: {_os_reason(exc)}"]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, [f"{path}: cannot read config file: it is {_file_kind(info.st_mode)}, "
                                     "not a regular file"])
        if info.st_size > limit:
            raise ConfigError(path, [_too_large(path, f"{info.st_size} bytes", limit)])
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise ConfigError(path, [f"{path}: cannot read config file: {_os_reason(exc)}"]) from None
    finally:
        os.close(fd)
    if total > limit:
        raise ConfigError(path, [_too_large(path, "larger", limit)])
    return b"".join(chunks)


def _decode(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"{path}: invalid YAML: not UTF-8 text (byte {exc.start})"]) from None


def _too_large(path: str, size: str, limit: int) -> str:
    return f"{path}: cannot read config file: it is {size}; the limit is {limit // 1024} KiB"


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.EISDIR:
        return "it is a directory, not a regular file"
    return exc.strerror or str(exc)


def _short(text: str) -> str:
    text = one_line(text)
    return text if len(text) <= 200 else text[:197] + "..."


def _yaml_problem(path: str, exc: yaml.YAMLError) -> str:
    """``file:LINE:COL: invalid YAML: <problem>`` (1-based line and column)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and "duplicate key" not in problem:
        problem = f"{problem} ({context})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return one_line(f"{where}: invalid YAML: {problem}")


def config_dir(path: str) -> str:
    """Absolute directory of the config file: the base for relative paths."""
    return os.path.dirname(os.path.abspath(path))
