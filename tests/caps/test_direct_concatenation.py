"""The direct path for plain concatenations gives exactly what the CEL interpreter gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.caps import RequestView, WorkspaceView
from capgate.caps.cel import compile_expression, run, secrets_to_cel, to_plain

REQUEST = RequestView(
    method="GET",
    scheme="https",
    host="api.example.com",
    port=443,
    path="/a/b",
    headers={"x-a": "1"},
    query={"q": "2"},
)
WORKSPACE = WorkspaceView(id="ws-9", role="reader", user="ada")
SECRETS = {"token": "s3cr3t-value", "tenant": "t-42"}

literal = st.text(
    alphabet=st.characters(blacklist_characters='"\\\n\r', blacklist_categories=("Cs",)),
    max_size=8,
).map(lambda t: f'"{t}"')
operand = st.one_of(
    literal,
    st.sampled_from(['secrets["token"]', "secrets['tenant']"]),
    st.sampled_from(["workspace.id", "workspace.role", "workspace.user"]),
    st.sampled_from(["request.method", "request.scheme", "request.host", "request.path"]),
)


def _interpreted(source: str) -> str:
    expression = compile_expression(source)
    activation = {
        "request": REQUEST.cel_value,
        "workspace": WORKSPACE.cel_value,
        "secrets": secrets_to_cel({n: SECRETS[n] for n in expression.secrets}),
    }
    return to_plain(run(expression, activation))


def _direct(source: str) -> str:
    expression = compile_expression(source)
    assert expression.parts is not None, source
    from capgate.caps.transforms import _concatenate

    return _concatenate(expression.parts, REQUEST, WORKSPACE, SECRETS)


@settings(max_examples=200, deadline=None)
@given(st.lists(operand, min_size=1, max_size=5), st.sampled_from(["+", " + ", "+ "]))
def test_direct_concatenation_equals_the_interpreter(operands, plus):
    source = plus.join(operands)
    assert _direct(source) == _interpreted(source)


def test_other_shapes_are_left_to_the_interpreter():
    for source in (
        "request.port",
        'request.headers["x-a"]',
        '"a\\nb"',
        'size("a") > 0 ? "x" : "y"',
        "workspace.id.size()",
        'r"raw"',
        '"""triple"""',
    ):
        assert compile_expression(source).parts is None, source


def test_variables_lists_only_what_the_expression_names():
    assert compile_expression('request.headers["x-a"] + "x"').variables == {"request"}
    assert compile_expression('"x"').variables == frozenset()
