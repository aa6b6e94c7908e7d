"""CEL for transform values: compile once, check secret references, evaluate safely.

Three rules keep secrets in their place:

* `secrets` may appear only as `secrets["literal"]` (a string literal index). Every other
  use is rejected at load: `secrets` alone, a dynamic or computed key (`secrets[x]`,
  `secrets["a" + b]`), a field select (`secrets.name`, `has(secrets.name)`; write
  `secrets["name"]` instead), methods and macros (`secrets.exists(...)`), `.secrets`,
  and a macro variable named `secrets`. The literal names are the expression's declared
  secrets; at run time its `secrets` map holds exactly those.
* cel-python's error text can contain the whole activation, secrets included, so no
  exception text from evaluation ever leaves this module: `run` returns a failure marker.
* cel-python logs activations at DEBUG and failures (with values) at ERROR, so its
  loggers are silenced here for the whole process, not merely raised to WARNING.

One runner kind is used process-wide: `CompiledRunner` (the environment below is built at
import so cel-python's shared parser is created with the tree class it needs; mixing
runner kinds in one process crashed).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import celpy.celtypes as celtypes
import lark
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, celstr

MAX_EXPRESSION_LENGTH = 4096
_MAX_DEPTH = 64


def _silence_celpy() -> None:
    """Drop every cel-python log record; records of its loggers may carry secret values."""
    logging.getLogger("celpy").setLevel(logging.CRITICAL + 1)
    logging.getLogger("lark").setLevel(logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name == "celpy" or name.startswith("celpy."):
            logging.getLogger(name).disabled = True


_silence_celpy()
_ENV = celpy.Environment(runner_class=celpy.CompiledRunner)
# A first evaluation creates the rest of cel-python's loggers, so they can be disabled too.
_ENV.program(_ENV.compile('"warm-up"')).evaluate({})
_silence_celpy()


class CelCompileError(Exception):
    """An expression failed to compile or to pass the secret-reference checks.

    `.messages` are user-facing (they quote the expression, never a value);
    `.column` is the 1-based column in the expression of a syntax error, if known.
    """

    def __init__(self, messages: list[str], column: int | None = None) -> None:
        self.messages = tuple(messages)
        self.column = column
        super().__init__("; ".join(messages))


@dataclass(frozen=True)
class CelExpression:
    """A compiled transform value and the secret names it declares.

    `variables` are the top-level variables the expression may read (an over-estimate is
    harmless: evaluation only builds what is listed). `parts` is set when the expression
    is a plain concatenation of string literals, `secrets["name"]` and string fields of
    `workspace` / `request`: those are computed directly, without the interpreter.
    """

    source: str
    secrets: frozenset[str]
    program: Any = field(repr=False, compare=False, hash=False)
    variables: frozenset[str] = frozenset({"request", "workspace", "secrets"})
    parts: tuple[Part, ...] | None = None


@dataclass(frozen=True)
class Part:
    """One operand of a direct concatenation: a literal, a secret, or a string field."""

    kind: str  # "literal" | "secret" | "workspace" | "request"
    text: str  # the literal text, the secret name or the field name


class _Failed:
    """The marker `run` returns instead of raising: evaluation errors carry secrets."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<cel evaluation failed>"


FAILED = _Failed()


def compile_expression(source: str, *, allow_secrets: bool = True) -> CelExpression:
    """Compile a CEL source once; CelCompileError lists everything wrong with it."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise CelCompileError([f"CEL expression longer than {MAX_EXPRESSION_LENGTH} characters"])
    if not source.strip():
        raise CelCompileError(["empty CEL expression"])
    tree = _parse(source)
    names, problems = secret_references(tree)
    if names and not allow_secrets:
        problems.append(
            "a path transform may not reference secrets (paths are logged verbatim); "
            f"found secrets[{sorted(names)[0]!r}]"
        )
    if problems:
        raise CelCompileError(problems)
    return CelExpression(
        source=source,
        secrets=frozenset(names),
        program=_program(tree),
        variables=_variables(tree),
        parts=concatenation(source),
    )


VARIABLES = frozenset({"request", "workspace", "secrets"})


def _variables(tree: lark.Tree) -> frozenset[str]:
    """Which of request / workspace / secrets the expression names anywhere."""
    return frozenset(str(t) for t in tree.scan_values(lambda v: isinstance(v, lark.Token))) & (
        VARIABLES
    )


# Operands the direct path understands; anything else (escapes, raw or triple-quoted
# strings, calls, other fields, ints) leaves the expression to the interpreter.
_OPERAND = re.compile(
    r"""\s*(?:(?P<literal>"[^"\\\n]*"|'[^'\\\n]*')"""
    r"""|secrets\[\s*(?P<secret>"[^"\\\n]*"|'[^'\\\n]*')\s*\]"""
    r"""|(?P<variable>workspace|request)\.(?P<field>[A-Za-z_]+))\s*"""
)
STRING_FIELDS = {
    "workspace": frozenset({"id", "role", "user"}),
    "request": frozenset({"method", "scheme", "host", "path"}),
}


def concatenation(source: str) -> tuple[Part, ...] | None:
    """The operands of `a + b + ...` when every one is a direct operand, else None."""
    parts: list[Part] = []
    position = 0
    while True:
        match = _OPERAND.match(source, position)
        if match is None:
            return None
        parts.append(_part(match))
        if parts[-1].kind in STRING_FIELDS and parts[-1].text not in STRING_FIELDS[parts[-1].kind]:
            return None
        position = match.end()
        if position == len(source):
            return tuple(parts)
        if source[position] != "+":
            return None
        position += 1


def _part(match: re.Match[str]) -> Part:
    if match["literal"] is not None:
        return Part("literal", match["literal"][1:-1])
    if match["secret"] is not None:
        return Part("secret", match["secret"][1:-1])
    return Part(match["variable"], match["field"])


def _parse(source: str) -> lark.Tree:
    try:
        return _ENV.compile(source)
    except CELParseError as exc:
        column = getattr(exc, "column", None)
        where = f" at character {column}" if column else ""
        raise CelCompileError(
            [f"invalid CEL expression {source!r}: syntax error{where}"], column
        ) from None
    except RecursionError:
        raise CelCompileError([f"CEL expression {source[:40]!r}... is nested too deeply"]) from None
    except Exception as exc:  # lark raises a handful of types for odd input
        raise CelCompileError(
            [f"invalid CEL expression {source!r} ({type(exc).__name__})"]
        ) from None


def _program(tree: lark.Tree) -> Any:
    try:
        return _ENV.program(tree)
    except RecursionError:
        raise CelCompileError(["CEL expression is nested too deeply"]) from None
    except Exception as exc:  # the transpiler rejects some trees that parse
        raise CelCompileError(
            [f"CEL expression cannot be compiled ({type(exc).__name__})"]
        ) from None


# --- static analysis -------------------------------------------------------------------

_PASSTHROUGH = {
    "expr",
    "conditionalor",
    "conditionaland",
    "relation",
    "addition",
    "multiplication",
    "unary",
    "member",
    "primary",
}


def _single_child(node: lark.Tree) -> lark.Tree | None:
    if len(node.children) == 1 and isinstance(node.children[0], lark.Tree):
        return node.children[0]
    return None


def _unwrap(node: lark.Tree) -> lark.Tree:
    """Descend through the grammar's one-child precedence layers."""
    while node.data in _PASSTHROUGH:
        child = _single_child(node)
        if child is None:
            break
        node = child
    return node


def _ident_name(node: lark.Tree) -> str | None:
    node = _unwrap(node)
    if node.data == "ident" and isinstance(node.children[0], lark.Token):
        return str(node.children[0])
    return None


def _string_literal(node: lark.Tree) -> str | None:
    node = _unwrap(node)
    if node.data != "literal" or not isinstance(node.children[0], lark.Token):
        return None
    token = node.children[0]
    if token.type not in ("STRING_LIT", "MLSTRING_LIT"):
        return None
    try:
        return str(celstr(token))
    except Exception:  # an escape celpy cannot decode: treat the key as not a literal
        return None


def secret_references(tree: lark.Tree) -> tuple[set[str], list[str]]:
    """Every `secrets["literal"]` name in a parsed expression, and every rejected use."""
    names: set[str] = set()
    problems: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        verdict = _classify(node)
        if verdict is None:
            stack.extend(c for c in node.children if isinstance(c, lark.Tree))
        elif isinstance(verdict, _Ref):
            names.add(verdict.name)
        else:
            problems.append(verdict)
    return names, sorted(set(problems))


@dataclass(frozen=True)
class _Ref:
    name: str


_BARE = 'secrets may be used only as secrets["name"] with a string literal name'


def _classify(node: lark.Tree) -> _Ref | str | None:
    """A secret reference, a problem message, or None (keep walking the children)."""
    kind = node.data
    if kind == "member_index" and _ident_name(node.children[0]) == "secrets":
        name = _string_literal(node.children[1])
        if name is None:
            return "dynamic secret reference: the key of secrets[...] must be a string literal"
        return _Ref(name)
    if kind == "member_dot" and _ident_name(node.children[0]) == "secrets":
        field_name = node.children[1]
        return f'field selection secrets.{field_name} is not allowed; write secrets["{field_name}"]'
    if kind == "member_dot_arg" and _ident_name(node.children[0]) == "secrets":
        return (
            f"functions and macros over secrets (secrets.{node.children[1]}(...)) are not allowed"
        )
    if kind in ("dot_ident", "dot_ident_arg", "ident_arg") and _token_is_secrets(node):
        return _BARE
    if kind == "ident" and _token_is_secrets(node):
        return _BARE
    return None


def _token_is_secrets(node: lark.Tree) -> bool:
    token = node.children[0] if node.children else None
    return isinstance(token, lark.Token) and str(token) == "secrets"


# --- evaluation ------------------------------------------------------------------------


def _string(text: str) -> celtypes.StringType:
    return str.__new__(celtypes.StringType, text)


def _map(items: dict[Any, Any]) -> celtypes.MapType:
    # MapType's own constructor type-checks every item through typing generics; these
    # items are built here from known types, so fill the dict directly (3x faster).
    result = celtypes.MapType()
    dict.update(result, items)
    return result


def string_map(mapping: Mapping[str, str]) -> celtypes.MapType:
    """A str -> str mapping as a CEL map (headers, query, secrets)."""
    return _map({_string(k): _string(v) for k, v in mapping.items()})


def record(fields: Mapping[str, str | int | Mapping[str, str]]) -> celtypes.MapType:
    """A flat record of strings, ints and str -> str maps as a CEL map (request, workspace)."""
    items: dict[Any, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            items[_string(name)] = _string(value)
        elif isinstance(value, int):
            items[_string(name)] = celtypes.IntType(value)
        else:
            items[_string(name)] = string_map(value)
    return _map(items)


def secrets_to_cel(secrets: Mapping[str, str]) -> celtypes.MapType:
    """The `secrets` variable for one evaluation."""
    return string_map(secrets)


def run(expression: CelExpression, activation: Mapping[str, Any]) -> Any:
    """Evaluate; the result as plain Python, or FAILED. Never raises, never logs."""
    try:
        value = expression.program.evaluate(dict(activation))
    except Exception:  # text discarded on purpose: it can quote the activation
        value = FAILED
    if isinstance(value, CELEvalError):
        return FAILED
    return value


class NotPlain(Exception):
    """A CEL result has no JSON form (bytes, timestamps, NaN, non-string map keys)."""


def to_plain(value: Any, depth: int = 0) -> Any:
    """Convert a CEL result into str/int/float/bool/None/list/dict; NotPlain otherwise."""
    if depth > _MAX_DEPTH:
        raise NotPlain()
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, bool | celtypes.BoolType):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotPlain()
        return float(value)
    if isinstance(value, list | tuple):
        return [to_plain(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return _map_to_plain(value, depth)
    raise NotPlain()


def _map_to_plain(value: dict[Any, Any], depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise NotPlain()
        result[str.__str__(key)] = to_plain(item, depth + 1)
    return result
