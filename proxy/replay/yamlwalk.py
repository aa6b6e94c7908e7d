"""Walking composed YAML nodes for the fixture loader: every mistake becomes a `Problem`
with file, line and column, and the walk goes on so that one run reports them all."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from capgate.caps.yamlnodes import NodeReader, describe

Node = yaml.Node
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"


class Walker(NodeReader):
    """Collects the problems of one fixture file while the loader reads its nodes.

    Composing, positions and wording are the caps loader's (`NodeReader`); this adds the
    readers the fixture schema needs.
    """

    empty_message = "empty fixture file"

    @staticmethod
    def line(node: Node) -> int:
        return node.start_mark.line + 1

    def fixed_mapping(
        self, node: Node, where: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Node] | None:
        """A fixed-key mapping: unknown, duplicate and missing keys are problems."""
        pairs = self.entries(node, where, must_exist=True)
        if not isinstance(node, yaml.MappingNode):
            return None
        found: dict[str, Node] = {}
        for name, value in pairs:
            if name not in allowed:
                key = next(k for k, v in node.value if v is value)
                self.problem(
                    key, f"unknown key '{name}' in {where}; expected one of: " + ", ".join(allowed)
                )
            else:
                found[name] = value
        for name in required:
            if name not in found:
                self.problem(node, f"{where}: missing required key '{name}'")
        return found

    def entries(
        self, node: Node | None, where: str, must_exist: bool = False
    ) -> list[tuple[str, Node]]:
        """A free-key mapping's (key, value node) pairs; None (absent) gives none."""
        if node is None or (not must_exist and _is_null(node)):
            return []
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{where}: expected a mapping, found {describe(node)}")
            return []
        seen: dict[str, int] = {}
        pairs = []
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                self.problem(key, f"{where}: expected a string key, found {describe(key)}")
            elif key.value in seen:
                self.problem(
                    key, f"duplicate key '{key.value}' in {where} (first at line {seen[key.value]})"
                )
            else:
                seen[key.value] = self.line(key)
                pairs.append((key.value, value))
        return pairs

    def string(self, node: Node, where: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return node.value
        self.problem(node, f"{where}: expected a string, found {describe(node)}")
        return None

    def integer(self, node: Node, where: str) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT and node.value.isdigit():
            return int(node.value)
        self.problem(node, f"{where}: expected an integer, found {describe(node)}")
        return None

    def string_items(self, node: Node, where: str) -> list[tuple[str, Node]]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{where}: expected a list of strings, found {describe(node)}")
            return []
        items = []
        for item in node.value:
            text = self.string(item, where)
            if text is not None:
                items.append((text, item))
        return items

    def plain(self, node: Node) -> Any:
        """The node as a plain Python value (str, int, float, bool, None, list, dict)."""
        try:
            return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.problem(node, f"cannot read value: {exc}")
            return None

    def scalars(self, root: Node) -> Iterator[yaml.ScalarNode]:
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
                yield node
            elif isinstance(node, yaml.MappingNode):
                stack.extend(part for pair in node.value for part in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)


def _is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
