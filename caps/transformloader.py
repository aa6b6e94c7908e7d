"""Reading the transforms of a capability: auth, header, query, body and path.

Each CEL value is compiled here, once, at load; its problems point at the value's line.
"""

from __future__ import annotations

import re

import yaml

from capgate.caps.cel import CelCompileError, CelExpression, compile_expression
from capgate.caps.http import MAX_HEADER_NAME, forbidden_header, valid_header_name, valid_query_name
from capgate.caps.model import (
    AUTH_PROVIDERS,
    Action,
    AuthTransform,
    BodyTransform,
    HeaderTransform,
    PathTransform,
    QueryTransform,
    Transform,
)
from capgate.caps.transforms import parse_pointer
from capgate.caps.yamlnodes import Entries, NodeReader

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_ACTIONS: dict[str | None, Action] = {"set": "set", "append": "append", "remove": "remove"}
_TRANSFORM_KINDS = ("auth", "header", "query", "body", "path")


class TransformReader:
    """Reads names and transform lists, recording problems on the shared NodeReader."""

    def __init__(self, reader: NodeReader) -> None:
        self.r = reader

    def name(self, entries: Entries, key: str, what: str) -> str | None:
        """The validated name under `key`, or None (absent, or a problem was recorded)."""
        if key not in entries:
            return None
        node = entries[key][1]
        name = self.r.string(node, what)
        if name is not None and not NAME.fullmatch(name):
            self.r.problem(node, f"{what} {name!r}: expected letters, digits, '_', '.', ':' or '-'")
            return None
        return name

    # --- transforms ----------------------------------------------------------------------

    def transforms(self, entries: Entries, where: str) -> tuple[Transform, ...] | None:
        if "transforms" not in entries:
            return ()
        items = self.r.sequence(entries["transforms"][1], f"{where} transforms")
        if items is None:
            return None
        before = len(self.r.problems)
        transforms = [self._transform(item, index, where) for index, item in enumerate(items)]
        if len(self.r.problems) > before:
            return None
        return tuple(t for t in transforms if t is not None)

    def _transform(self, node: yaml.Node, index: int, where: str) -> Transform | None:
        entries = self.r.mapping(node, f"{where} transform")
        if entries is None:
            return None
        kinds = [k for k in entries if k in _TRANSFORM_KINDS]
        self.r.check_keys(node, entries, f"{where} transform", _TRANSFORM_KINDS)
        if len(kinds) != 1:
            if len(kinds) == len(entries):
                self.r.problem(
                    node, f"{where}: a transform has exactly one of: {', '.join(_TRANSFORM_KINDS)}"
                )
            return None
        kind = kinds[0]
        body_node = entries[kind][1]
        fields = self.r.mapping(body_node, f"{kind} transform")
        if fields is None:
            return None
        line = node.start_mark.line + 1
        reader = getattr(self, f"_{kind}")
        return reader(body_node, fields, index, line)

    def _auth(self, node: yaml.Node, fields: Entries, index: int, line: int) -> Transform | None:
        self.r.check_keys(
            node,
            fields,
            "auth transform",
            ("credential", "provider"),
            required=("credential", "provider"),
        )
        credential = self.name(fields, "credential", "credential name")
        provider = None
        if "provider" in fields:
            provider_node = fields["provider"][1]
            provider = self.r.string(provider_node, "auth provider")
            if provider is not None and provider not in AUTH_PROVIDERS:
                self.r.problem(
                    provider_node,
                    f"unknown provider {provider!r}; expected one of: {', '.join(AUTH_PROVIDERS)}",
                )
                provider = None
        if credential is None or provider is None:
            return None
        return AuthTransform(index=index, line=line, credential=credential, provider=provider)

    def _header(self, node: yaml.Node, fields: Entries, index: int, line: int) -> Transform | None:
        name = self._field_name(node, fields, "header")
        if name is not None and not valid_header_name(name):
            self.r.problem(
                fields["name"][1],
                f"invalid header name {name!r}: expected an HTTP token (letters, digits and "
                f"!#$%&'*+-.^_`|~) of at most {MAX_HEADER_NAME} characters",
            )
            name = None
        elif name is not None and forbidden_header(name):
            self.r.problem(
                fields["name"][1],
                f"header {name!r} cannot be changed by a transform "
                "(it routes or frames the request)",
            )
            name = None
        action, value, ok = self._action_value(node, fields, "header")
        if name is None or not ok:
            return None
        return HeaderTransform(index=index, line=line, name=name, action=action, value=value)

    def _query(self, node: yaml.Node, fields: Entries, index: int, line: int) -> Transform | None:
        name = self._field_name(node, fields, "query")
        if name is not None and not valid_query_name(name):
            self.r.problem(fields["name"][1], f"invalid query parameter name {name!r}")
            name = None
        action, value, ok = self._action_value(node, fields, "query")
        if name is None or not ok:
            return None
        return QueryTransform(index=index, line=line, name=name, action=action, value=value)

    def _body(self, node: yaml.Node, fields: Entries, index: int, line: int) -> Transform | None:
        self.r.check_keys(
            node,
            fields,
            "body transform",
            ("pointer", "action", "value"),
            required=("pointer", "action"),
        )
        pointer = None
        if "pointer" in fields:
            pointer = self.r.string(fields["pointer"][1], "body pointer")
            try:
                parse_pointer(pointer) if pointer is not None else None
            except ValueError as exc:
                self.r.problem(fields["pointer"][1], str(exc))
                pointer = None
        action, value, ok = self._action_value(node, fields, "body", check=False)
        if pointer is None or not ok:
            return None
        return BodyTransform(index=index, line=line, pointer=pointer, action=action, value=value)

    def _path(self, node: yaml.Node, fields: Entries, index: int, line: int) -> Transform | None:
        self.r.check_keys(node, fields, "path transform", ("value",), required=("value",))
        if "value" not in fields:
            return None
        value = self._cel(fields["value"][1], "path value", allow_secrets=False)
        return None if value is None else PathTransform(index=index, line=line, value=value)

    def _field_name(self, node: yaml.Node, fields: Entries, kind: str) -> str | None:
        self.r.check_keys(
            node,
            fields,
            f"{kind} transform",
            ("name", "action", "value"),
            required=("name", "action"),
        )
        return self.r.string(fields["name"][1], f"{kind} name") if "name" in fields else None

    def _action_value(
        self, node: yaml.Node, fields: Entries, kind: str, check: bool = True
    ) -> tuple[Action, CelExpression | None, bool]:
        """The action and compiled value; `ok` is False when either had a problem."""
        if "action" not in fields:
            return "set", None, False
        action_node = fields["action"][1]
        text = self.r.string(action_node, f"{kind} action")
        action = _ACTIONS.get(text)
        if action is None:
            if text is not None:
                self.r.problem(
                    action_node, f"{kind} action {text!r}: expected set, append or remove"
                )
            return "set", None, False
        if action == "remove":
            if "value" in fields:
                self.r.problem(fields["value"][0], f"{kind} transform: remove takes no value")
                return action, None, False
            return action, None, True
        if "value" not in fields:
            self.r.problem(node, f"{kind} transform: action {action} needs a value")
            return action, None, False
        value = self._cel(fields["value"][1], f"{kind} value")
        return action, value, value is not None

    def _cel(self, node: yaml.Node, where: str, allow_secrets: bool = True) -> CelExpression | None:
        source = self.r.string(node, f"{where} (a CEL expression; quote it)")
        if source is None:
            return None
        try:
            expression = compile_expression(source, allow_secrets=allow_secrets)
        except CelCompileError as exc:
            offset = _column_offset(node, exc.column)
            for message in exc.messages:
                self.r.problem(node, f"{where}: {message}", offset)
            return None
        for name in sorted(expression.secrets):
            if not NAME.fullmatch(name):
                self.r.problem(
                    node,
                    f"{where}: secret name {name!r}: expected letters, digits, "
                    "'_', '.', ':' or '-'",
                )
                return None
        return expression


def _column_offset(node: yaml.Node, cel_column: int | None) -> int:
    """How far into a one-line scalar a CEL syntax error sits, counting its opening quote."""
    if not cel_column or node.start_mark.line != node.end_mark.line:
        return 0
    quote = 1 if getattr(node, "style", None) in ("'", '"') else 0
    return quote + cel_column - 1
