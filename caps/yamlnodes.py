"""Reading YAML nodes with positions: every mistake becomes a Problem, none stops the walk.

The loader works on `yaml.compose` nodes (not constructed Python values) so that every
problem can name its line and column, duplicate mapping keys can be caught, and aliases
can be refused before they can build cycles.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from capgate.caps.errors import Problem

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_KINDS = {
    _STR: "a string",
    _BOOL: "a boolean",
    _INT: "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "nothing (null)",
    "tag:yaml.org,2002:timestamp": "a date",
}

Entries = dict[str, tuple[yaml.Node, yaml.Node]]
# libyaml's parser when PyYAML was built with it: the pure-Python one is ~10x slower on
# large files. Both give the node marks the problems need.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def describe(node: yaml.Node) -> str:
    """What a node is, in words for an error message."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


class NodeReader:
    """Collects problems for one file while the loader reads its nodes.

    Subclasses (the replay fixture loader) set `empty_message` for their kind of file.
    """

    empty_message = "empty file: expected a mapping with version, capabilities and roles"

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []

    def problem(self, node: yaml.Node | None, message: str, column_offset: int = 0) -> None:
        """Record a problem at a node's start (1-based line and column)."""
        if node is None:
            self.problems.append(Problem(self.filename, 1, 1, message))
            return
        mark = node.start_mark
        self.problems.append(
            Problem(self.filename, mark.line + 1, mark.column + 1 + column_offset, message)
        )

    def compose(self, text: str) -> yaml.Node | None:
        """The root node of a single YAML document, or None after recording why not."""
        try:
            root = yaml.compose(text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            detail = " ".join(p for p in (exc.context, exc.problem) if p)
            self.problems.append(Problem(self.filename, line, column, f"invalid YAML: {detail}"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.filename, 1, 1, f"invalid YAML: {exc}"))
            return None
        except RecursionError:
            self.problems.append(Problem(self.filename, 1, 1, "YAML nested too deeply"))
            return None
        if root is None:
            self.problems.append(
                Problem(
                    self.filename,
                    1,
                    1,
                    self.empty_message,
                )
            )
            return None
        return None if self._has_aliases(root) else root

    def _has_aliases(self, root: yaml.Node) -> bool:
        """Report nodes reached twice: an alias re-uses its anchor's node (maybe in a cycle)."""
        seen: set[int] = set()
        found = False
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                self.problem(
                    node,
                    "YAML anchors and aliases are not supported: write the value out",
                )
                found = True
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                stack.extend(part for pair in node.value for part in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
        return found

    def mapping(self, node: yaml.Node, where: str) -> Entries | None:
        """A mapping's entries by key, reporting non-string and duplicate keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where}: expected a mapping, found {describe(node)}")
            return None
        entries: Entries = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                self.problem(key, f"{where}: expected a string key, found {describe(key)}")
            elif key.value in entries:
                first = entries[key.value][0].start_mark.line + 1
                self.problem(key, f"duplicate key '{key.value}' in {where} (first at line {first})")
            else:
                entries[key.value] = (key, value)
        return entries

    def check_keys(
        self,
        node: yaml.Node,
        entries: Entries,
        where: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> None:
        """Report unknown keys and missing required keys of a mapping."""
        allowed = tuple(allowed)
        for name, (key, _) in entries.items():
            if name not in allowed:
                self.problem(
                    key, f"unknown key '{name}' in {where}; expected one of: {', '.join(allowed)}"
                )
        for name in required:
            if name not in entries:
                self.problem(node, f"{where}: missing required key '{name}'")

    def string(self, node: yaml.Node, where: str) -> str | None:
        """A string scalar's text, or None after recording the problem."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return node.value
        self.problem(node, f"{where}: expected a string, found {describe(node)}")
        return None

    def boolean(self, node: yaml.Node, where: str) -> bool | None:
        """A true/false scalar, or None after recording the problem."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            return node.value.lower() in ("true", "yes", "on", "y")
        self.problem(node, f"{where}: expected true or false, found {describe(node)}")
        return None

    def integer(self, node: yaml.Node, where: str) -> int | None:
        """A plain decimal integer scalar, or None after recording the problem."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT and node.value.isdigit():
            return int(node.value)
        self.problem(node, f"{where}: expected an integer, found {describe(node)}")
        return None

    def string_list(
        self, node: yaml.Node, where: str, required: bool = False
    ) -> list[tuple[str, yaml.Node]] | None:
        """A non-empty list of strings with their nodes, or None after recording why not."""
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{where}: expected a list of strings, found {describe(node)}")
            return None
        if not node.value:
            hint = "list at least one" if required else "omit the key or list at least one value"
            self.problem(node, f"{where}: empty list; {hint}")
            return None
        items = []
        for item in node.value:
            text = self.string(item, where)
            if text is not None:
                items.append((text, item))
        return items

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node] | None:
        """A list's items, or None after recording the problem."""
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.problem(node, f"{where}: expected a list, found {describe(node)}")
        return None
