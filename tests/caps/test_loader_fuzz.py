"""Property: whatever text the loader is fed, only CapsError escapes."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capgate.caps import CapsConfig, CapsError, parse_caps

CEL_ALPHABET = st.sampled_from(
    [*"secrets[]\"'()+-*/%.,:?!<>=&|{} abcxyz019_\\\n", "request", "workspace", "has("]
)
cel_text = st.one_of(st.text(max_size=40), st.lists(CEL_ALPHABET, max_size=30).map("".join))


def load(text: str) -> CapsConfig | None:
    try:
        return parse_caps(text, "fuzz.yaml")
    except CapsError as exc:
        assert all("internal error" not in p.message for p in exc.problems), exc.problems
        assert all(p.line >= 1 and p.column >= 1 for p in exc.problems)
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_caps_error(text: str):
    load(text)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "name",
                    "match",
                    "hosts",
                    "transforms",
                    "header",
                    "value",
                    "roles",
                    "capabilities",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_values)
def test_arbitrary_yaml_structures_raise_only_caps_error(document):
    load(json.dumps(document))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cel_text, st.sampled_from(["header", "query", "body", "path"]))
def test_arbitrary_cel_values_raise_only_caps_error(source: str, kind: str):
    spec = {"value": source}
    if kind != "path":
        spec |= (
            {"action": "set", "name": "X-A"}
            if kind != "body"
            else {"action": "set", "pointer": "/a"}
        )
    document = {
        "version": 1,
        "capabilities": [
            {"name": "c", "match": {"hosts": ["a.com"]}, "transforms": [{kind: spec}]}
        ],
    }
    config = load(json.dumps(document))

    if config is not None and kind == "path":
        assert config.capabilities[0].secrets == frozenset()
