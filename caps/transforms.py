"""Transform evaluation: from a compiled transform and a request to an Edit or a failure.

Transforms observe, never deny: every problem becomes a `TransformFailure` with a short
reason code. No exception text and no value is ever part of a failure.

Reason codes: `missing_secret` (a declared secret was not supplied), `cel_error` (the
expression failed at run time), `type_error` (wrong result type, e.g. a header value that
is not a string), `invalid_header_value`, `invalid_query_value`, `invalid_path`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from capgate.caps.cel import FAILED, NotPlain, Part, run, secrets_to_cel, to_plain
from capgate.caps.errors import BodyEditError
from capgate.caps.http import valid_header_value, valid_path, valid_query_value
from capgate.caps.model import (
    AuthTransform,
    BodyEdit,
    BodyTransform,
    Edit,
    HeaderEdit,
    HeaderTransform,
    PathEdit,
    PathTransform,
    QueryEdit,
    QueryTransform,
    RequestView,
    Transform,
    TransformFailure,
    WorkspaceView,
)


def evaluate(
    transform: Transform,
    request: RequestView,
    workspace: WorkspaceView,
    secrets: Mapping[str, str],
) -> Edit | TransformFailure:
    """The edit a transform makes to this request, or why it could not be computed.

    Only the secrets the transform declared are handed to CEL, whatever else `secrets`
    holds. `auth` transforms are the broker's business (minting): TypeError.
    """
    if isinstance(transform, AuthTransform):
        raise TypeError("auth transforms are applied from a minted credential, not evaluated")
    if transform.value is None:  # remove: nothing to compute
        return _removal(transform)
    if not transform.secrets <= secrets.keys():
        return TransformFailure(transform.label, "missing_secret")
    scoped = {name: secrets[name] for name in transform.secrets}
    if not all(isinstance(value, str) for value in scoped.values()):
        raise TypeError("secret values must be passed to evaluate() as plain str")
    expression = transform.value
    if expression.parts is not None:
        return _edit(transform, _concatenate(expression.parts, request, workspace, scoped))
    # Build only the variables the expression names: the request map is the costly one.
    activation: dict[str, Any] = {}
    if "request" in expression.variables:
        activation["request"] = request.cel_value
    if "workspace" in expression.variables:
        activation["workspace"] = workspace.cel_value
    if "secrets" in expression.variables:
        activation["secrets"] = secrets_to_cel(scoped)
    result = run(expression, activation)
    if result is FAILED:
        return TransformFailure(transform.label, "cel_error")
    try:
        value = to_plain(result)
    except NotPlain:
        return TransformFailure(transform.label, "type_error")
    return _edit(transform, value)


def _concatenate(
    parts: tuple[Part, ...],
    request: RequestView,
    workspace: WorkspaceView,
    secrets: Mapping[str, str],
) -> str:
    """A direct concatenation (see `CelExpression.parts`): the interpreter's result."""
    pieces = []
    for part in parts:
        if part.kind == "literal":
            pieces.append(part.text)
        elif part.kind == "secret":
            pieces.append(secrets[part.text])
        elif part.kind == "workspace":
            pieces.append(getattr(workspace, part.text))
        else:
            pieces.append(getattr(request, part.text))
    return "".join(pieces)


def _removal(transform: Transform) -> Edit:
    if isinstance(transform, HeaderTransform):
        return HeaderEdit(transform.name, "remove", None)
    if isinstance(transform, QueryTransform):
        return QueryEdit(transform.name, "remove", None)
    if isinstance(transform, BodyTransform):
        return BodyEdit(transform.pointer, "remove", None)
    raise TypeError(f"{transform.label} has no value")  # pragma: no cover - loader forbids


def _edit(transform: Transform, value: Any) -> Edit | TransformFailure:
    label = transform.label
    if isinstance(transform, BodyTransform):
        return BodyEdit(transform.pointer, transform.action, value)
    if not isinstance(value, str):
        return TransformFailure(label, "type_error")
    if isinstance(transform, HeaderTransform):
        if not valid_header_value(value):
            return TransformFailure(label, "invalid_header_value")
        return HeaderEdit(transform.name, transform.action, value)
    if isinstance(transform, QueryTransform):
        if not valid_query_value(value):
            return TransformFailure(label, "invalid_query_value")
        return QueryEdit(transform.name, transform.action, value)
    if isinstance(transform, PathTransform):
        if not valid_path(value):
            return TransformFailure(label, "invalid_path")
        return PathEdit(value)
    raise TypeError(f"unknown transform {label}")  # pragma: no cover


# --- JSON pointer edits ------------------------------------------------------------------


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of an RFC 6901 pointer; ValueError if it is malformed."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"bad JSON pointer {pointer!r}: it must be empty or start with '/'")
    if re.search(r"~(?![01])", pointer):
        raise ValueError(f"bad JSON pointer {pointer!r}: '~' must be followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


_MISSING = object()
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,15}")


def apply_body_edit(document: Any, edit: BodyEdit) -> Any:
    """A new document with the edit applied; the input is not modified.

    `set` creates missing intermediate objects and replaces an existing value (on an
    array, index `-` or the length appends). `append` adds to the array at the pointer,
    creating `[value]` when the member is absent. `remove` of an absent value is a no-op.
    Raises BodyEditError (a reason code) when the document's shape does not allow it.
    """
    return _apply(document, parse_pointer(edit.pointer), edit)


def _apply(node: Any, tokens: tuple[str, ...], edit: BodyEdit) -> Any:
    if not tokens:
        return _apply_at_root(node, edit)
    if isinstance(node, dict):
        return _apply_in_object(node, tokens, edit)
    if isinstance(node, list):
        return _apply_in_array(node, tokens, edit)
    raise BodyEditError("body_not_container")


def _apply_at_root(node: Any, edit: BodyEdit) -> Any:
    if edit.action == "set":
        return edit.value
    if edit.action == "append":
        if not isinstance(node, list):
            raise BodyEditError("body_not_array")
        return [*node, edit.value]
    raise BodyEditError("body_root_remove")


def _apply_in_object(node: dict[str, Any], tokens: tuple[str, ...], edit: BodyEdit) -> Any:
    key, rest = tokens[0], tokens[1:]
    child = node.get(key, _MISSING)
    if child is _MISSING and edit.action == "remove":
        return node
    new = dict(node)
    if rest:
        new[key] = _apply({} if child is _MISSING else child, rest, edit)
    elif edit.action == "set":
        new[key] = edit.value
    elif edit.action == "remove":
        del new[key]
    else:
        new[key] = _appended(child, edit.value)
    return new


def _apply_in_array(node: list[Any], tokens: tuple[str, ...], edit: BodyEdit) -> Any:
    token, rest = tokens[0], tokens[1:]
    index = _array_index(token, len(node))
    present = index < len(node)
    if not present and edit.action == "remove":
        return node
    new = list(node)
    if rest:
        if not present:
            raise BodyEditError("body_path_not_found")
        new[index] = _apply(node[index], rest, edit)
    elif edit.action == "set":
        new[index : index + 1] = [edit.value]
    elif edit.action == "remove":
        del new[index]
    else:
        if not present:
            raise BodyEditError("body_path_not_found")
        new[index] = _appended(node[index], edit.value)
    return new


def _array_index(token: str, length: int) -> int:
    if token == "-":
        return length
    if not _ARRAY_INDEX.fullmatch(token):
        raise BodyEditError("body_index_invalid")
    index = int(token)
    if index > length:
        raise BodyEditError("body_index_invalid")
    return index


def _appended(target: Any, value: Any) -> list[Any]:
    if target is _MISSING:
        return [value]
    if not isinstance(target, list):
        raise BodyEditError("body_not_array")
    return [*target, value]
