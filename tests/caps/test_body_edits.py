"""JSON-pointer edits on a parsed JSON body: pure, and failing with reason codes."""

from __future__ import annotations

import copy

import pytest

from capgate.caps import BodyEdit, BodyEditError, apply_body_edit


def test_set_replaces_an_existing_member():
    assert apply_body_edit({"a": 1}, BodyEdit("/a", "set", 2)) == {"a": 2}


def test_set_creates_missing_intermediate_objects():
    assert apply_body_edit({}, BodyEdit("/metadata/tenant", "set", "t")) == {
        "metadata": {"tenant": "t"}
    }


def test_set_on_array_index_replaces_and_dash_appends():
    assert apply_body_edit([1, 2], BodyEdit("/0", "set", 9)) == [9, 2]
    assert apply_body_edit([1, 2], BodyEdit("/-", "set", 3)) == [1, 2, 3]


def test_pointer_escapes_are_decoded():
    assert apply_body_edit({}, BodyEdit("/a~1b/c~0d", "set", 1)) == {"a/b": {"c~d": 1}}


def test_empty_pointer_sets_the_whole_document():
    assert apply_body_edit({"a": 1}, BodyEdit("", "set", [1])) == [1]


def test_remove_deletes_a_member_and_ignores_an_absent_one():
    assert apply_body_edit({"a": 1, "b": 2}, BodyEdit("/a", "remove", None)) == {"b": 2}
    assert apply_body_edit({"b": 2}, BodyEdit("/a/x", "remove", None)) == {"b": 2}


def test_append_adds_to_an_array_or_creates_one():
    assert apply_body_edit({"xs": [1]}, BodyEdit("/xs", "append", 2)) == {"xs": [1, 2]}
    assert apply_body_edit({}, BodyEdit("/xs", "append", 1)) == {"xs": [1]}


def test_the_input_document_is_not_modified():
    document = {"a": {"b": [1, 2]}, "c": 3}
    before = copy.deepcopy(document)

    apply_body_edit(document, BodyEdit("/a/b", "append", 3))
    apply_body_edit(document, BodyEdit("/a/b/0", "remove", None))

    assert document == before


@pytest.mark.parametrize(
    ("document", "edit", "reason"),
    [
        ({"a": 1}, BodyEdit("/a/b", "set", 1), "body_not_container"),
        ({"a": 1}, BodyEdit("/a", "append", 1), "body_not_array"),
        ([1], BodyEdit("/5", "set", 1), "body_index_invalid"),
        ([1], BodyEdit("/01", "set", 1), "body_index_invalid"),
        ([1], BodyEdit("/x", "set", 1), "body_index_invalid"),
        ([], BodyEdit("/0/a", "set", 1), "body_path_not_found"),
        ({}, BodyEdit("", "remove", None), "body_root_remove"),
        ("text", BodyEdit("/a", "set", 1), "body_not_container"),
    ],
)
def test_impossible_edits_raise_a_reason_code(document, edit, reason):
    with pytest.raises(BodyEditError) as caught:
        apply_body_edit(document, edit)

    assert caught.value.reason == reason
