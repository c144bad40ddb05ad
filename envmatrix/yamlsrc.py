"""The only module that imports `yaml`: matrix files read with lines, resolved plans written.

A matrix file is composed into nodes (nothing is constructed from tags) and walked into plain
data, and every key path is mapped to its line so that `envmatrix.config.load` can say
`FILE:LINE: key.path: message`. Duplicate keys are errors, size and nesting are bounded, and
plain scalars stay the text the user wrote (`1.20` stays "1.20", not the float 1.2); pydantic
turns text into numbers where a field is numeric. Resolved plans (`matrix.resolved.yaml`) are
plain safe YAML, written atomically and read back whole.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from envmatrix import problems
from envmatrix.errors import ConfigError
from envmatrix.problems import KeyPath

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # alias expansion ("billion laughs") stops here


class YamlError(ValueError):
    """A YAML file that does not parse; `str(err)` is the parser's own description."""


# -- YAML with line numbers -----------------------------------------------------------------


@dataclass
class Doc:
    """Plain data from a YAML file, plus the line of every key path (1-based)."""

    data: Any = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    key_lines: dict[KeyPath, int] = field(default_factory=dict)
    nodes: int = 0

    def line(self, path: KeyPath, at_key: bool = False) -> int:
        if at_key and path in self.key_lines:
            return self.key_lines[path]
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


_STANDARD_TAG = "tag:yaml.org,2002:"
# Tags whose text we accept; anything else (e.g. !!python/object) is refused, not interpreted.
_PLAIN_TAGS = {_STANDARD_TAG + t for t in
               ("null", "bool", "int", "float", "str", "timestamp", "map", "seq", "merge")}


def read_with_lines(path: Path) -> Doc:
    """Compose (never construct) the YAML, then walk the nodes into plain data with lines."""
    text = _read_text(path)
    try:
        loader = yaml.SafeLoader(text)  # checks every character before parsing starts
    except yaml.reader.ReaderError as err:
        raise _character_error(path, text, err) from None
    try:
        node = loader.get_single_node()
        doc = Doc()
        doc.data = _walk(node, loader, (), doc, path) if node is not None else None
        return doc
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(path, err) from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: the file is larger than {MAX_FILE_BYTES} bytes. "
                              "Fix: a matrix file is a short YAML document; check the path.")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such matrix file. Fix: pass the path of an existing "
                          "matrix file (the default is matrix.yaml).") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the matrix file ({err}). "
                          "Fix: give a readable UTF-8 text file.") from None


def _character_error(path: Path, text: str, err: yaml.reader.ReaderError) -> ConfigError:
    """A control or other non-printable character: YAML refuses it, so do we, with its line."""
    line = text.count("\n", 0, err.position) + 1
    column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
    return ConfigError(f"{path}:{line}:{column}: character #x{err.character:04x} is not allowed "
                       "in YAML (control and other non-printable characters are refused).\n"
                       "  Fix: delete it; a matrix file holds printable text only.")


def _syntax_error(path: Path, err: yaml.MarkedYAMLError) -> ConfigError:
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = " ".join(str(p) for p in (err.context, err.problem) if p)
    if err.context_mark and mark and err.context_mark.line != mark.line:
        what += f" (the construct starts at line {err.context_mark.line + 1})"
    return ConfigError(f"{where}: YAML syntax error: {what}.\n  Fix: correct the YAML at "
                       "that line (indentation, a missing ':' or an unclosed quote).")


def _walk(node: yaml.Node, loader: yaml.SafeLoader, where: KeyPath, doc: Doc,
          path: Path) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES or len(where) > 50:
        raise _yaml_problem(path, node, "the document is too large or too deeply nested.",
                            "write a plain matrix file without alias chains.")
    doc.lines[where] = node.start_mark.line + 1
    if node.tag not in _PLAIN_TAGS:
        raise _yaml_problem(path, node, f"the tag {node.tag[:60]!r} is not supported.",
                            "remove the tag; write plain values.", where)
    if isinstance(node, yaml.MappingNode):
        own = {id(k) for k, _ in node.value if k.tag != _STANDARD_TAG + "merge"}
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        return _walk_mapping(node, loader, where, doc, path, own)
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, loader, (*where, i), doc, path) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == _STANDARD_TAG + "null" and node.style is None:
        return None
    return node.value  # the text as written; see the module docstring


def _walk_mapping(node: yaml.MappingNode, loader: yaml.SafeLoader, where: KeyPath, doc: Doc,
                  path: Path, own: set[int]) -> dict[str, Any]:
    """Keys written in this mapping (`own`) may override keys merged in with `<<`, not repeat."""
    out: dict[str, Any] = {}
    first_nodes: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _yaml_problem(path, key_node, "a key must be plain text, not a list or mapping.",
                                "write `name: value`.", where)
        key = key_node.value
        if key in out and id(first_nodes[key]) in own:
            first = doc.key_lines[(*where, key)]
            raise _yaml_problem(path, key_node, f"key {key!r} appears twice in one mapping "
                                f"(first at line {first}); YAML would keep only the last.",
                                "remove or merge one of them.", (*where, key))
        first_nodes[key] = key_node
        doc.key_lines[(*where, key)] = key_node.start_mark.line + 1
        out[key] = _walk(value_node, loader, (*where, key), doc, path)
    return out


def _yaml_problem(path: Path, node: yaml.Node, message: str, fix: str,
                  where: KeyPath = ()) -> ConfigError:
    line = node.start_mark.line + 1
    prefix = f"{problems.format_path(where)}: " if where else ""
    return ConfigError(f"{path}:{line}: {prefix}{message}\n  Fix: {fix}")


# -- resolved plans -------------------------------------------------------------------------


def dump_plain(data: Any, header: str = "") -> str:
    """Plain data (dicts, lists, str, numbers) as block YAML text, keys in the order given;
    `header` (comment lines, each starting with '#') goes first. Writing the file is the
    caller's (rundir.layout's atomic writes)."""
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def read_plain(path: Union[Path, str]) -> Any:
    """Plain data of a YAML file that envmatrix wrote; raises OSError, UnicodeDecodeError or
    YamlError (the caller says what the file is and what to do)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise YamlError(str(err)) from None
