"""Path globs are matched without backtracking (issue 11, class 6), with exactly the
meaning the regular-expression translation had (kept here as the reference)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from capgate.caps.globs import compile_glob


def reference(glob: str) -> re.Pattern[str]:
    """The former translation: `**` is `(?:/.*)?`, `*` is `[^/]*`, anchored."""
    parts = ["^"]
    for segment in glob.split("/")[1:]:
        if segment == "**":
            parts.append("(?:/.*)?")
        else:
            parts.append("/" + "[^/]*".join(re.escape(p) for p in segment.split("*")))
    parts.append("$")
    return re.compile("".join(parts), re.DOTALL)


segment_globs = st.one_of(
    st.just("**"),
    st.lists(st.sampled_from(["a", "b", "ab", "*", ""]), max_size=4)
    .map("".join)
    .map(lambda s: re.sub(r"[*]+", "*", s)),
)
globs = st.lists(segment_globs, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
paths = st.lists(st.text(alphabet="ab", max_size=5), max_size=6).map(lambda p: "/" + "/".join(p))


@settings(max_examples=2000)
@given(glob=globs, path=paths)
def test_the_linear_matcher_means_what_the_regex_meant(glob: str, path: str) -> None:
    assert compile_glob(glob).match(path) == bool(reference(glob).match(path))


def test_examples_of_the_documented_meaning() -> None:
    assert compile_glob("/repos/**").match("/repos")
    assert compile_glob("/repos/**").match("/repos/")
    assert compile_glob("/repos/**").match("/repos/a/b")
    assert not compile_glob("/repos/**").match("/reposx")
    assert compile_glob("/user/*").match("/user/")
    assert not compile_glob("/user/*").match("/user/x/y")
    assert compile_glob("/a*b*c").match("/aXbYc")
    assert not compile_glob("/a*b*c").match("/acb")
    assert compile_glob("/**/x/**/y").match("/p/x/q/r/y")


def test_a_pathological_segment_is_answered() -> None:
    """`/a*a*a*b` against 150 KB of `a`: the regex translation backtracks for seconds
    (cubic); the linear matcher answers at once (no timing is asserted here)."""
    assert not compile_glob("/a*a*a*b").match("/" + "a" * 150_000)
    assert compile_glob("/a*a*a*b").match("/" + "a" * 150_000 + "b")
    assert not compile_glob("/**/x/**/x/**/y").match("/x" * 20_000)


any_paths = st.one_of(paths, st.text(alphabet="ab/", max_size=8))


@settings(max_examples=2000)
@given(glob=globs, path=any_paths)
def test_the_fast_paths_agree_with_the_segment_matcher(glob: str, path: str) -> None:
    """Literal globs, `/prefix/**` and the literal-prefix precheck answer exactly what the
    full segment matcher would, for any path (also empty, or without a leading `/`)."""
    compiled = compile_glob(glob)
    assert compiled.match(path) == compiled._match_segments(path)
    if path.startswith("/"):
        assert compiled.match(path) == bool(reference(glob).match(path))
