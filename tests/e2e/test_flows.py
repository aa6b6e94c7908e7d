"""Behaviour beyond the attack corpus: streaming both ways, body transforms, limits,
decision rows of failures, unmatched=allow, OAuth 401 token drop, hot reload."""

from __future__ import annotations

import json
import logging
import time

import pytest

from .conftest import GITHUB_TOKEN, TENANT_SECRET, caps_text

pytestmark = pytest.mark.e2e


def _last_row(broker, before: int):
    deadline = time.monotonic() + 3
    while len(broker.decisions) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    return broker.decisions[-1]


def test_sse_reaches_the_agent_incrementally_and_scrubbed(proxy, memory_world, tls_upstream):
    url = tls_upstream.url("/sse?events=3&gap_ms=400", host="api.test")
    arrivals, text = [], b""
    with proxy.client(memory_world.token) as client, client.stream("GET", url) as reply:
        start = time.monotonic()
        for chunk in reply.iter_raw():
            arrivals.append(time.monotonic() - start)
            text += chunk
    assert arrivals[0] < 0.35  # the first event did not wait for the whole stream
    assert text.count(b"[REDACTED:github]") == 3
    assert GITHUB_TOKEN.encode() not in text


def test_large_chunked_download_is_scrubbed_across_chunk_edges(proxy, memory_world, tls_upstream):
    with proxy.client(memory_world.token) as client:
        reply = client.get(tls_upstream.url("/large", host="api.test"))
    assert reply.status_code == 200
    assert GITHUB_TOKEN.encode() not in reply.content
    assert reply.content.count(b"Bearer [REDACTED:github]") == 16


def test_large_request_body_is_streamed_to_the_upstream(proxy, memory_world, tls_upstream):
    body = b"y" * (3 * 1024 * 1024)
    with proxy.client(memory_world.token) as client:
        reply = client.post(tls_upstream.url("/repos/upload", host="api.test"), content=body)
    assert reply.status_code == 200
    assert tls_upstream.log.items[-1].body == body


def test_body_transform_sets_the_pointer_and_records_the_failing_one(
    proxy, memory_world, tls_upstream
):
    before = len(memory_world.broker.decisions)
    with proxy.client(memory_world.token) as client:
        reply = client.post(
            tls_upstream.url("/body", host="api.test"),
            json={"metadata": {"tenant": "agent-says"}, "x": 1},
        )
    assert reply.status_code == 200
    sent = json.loads(tls_upstream.log.items[-1].body)
    assert sent == {"metadata": {"tenant": TENANT_SECRET}, "x": 1}
    assert TENANT_SECRET not in reply.text  # echoed back, scrubbed
    row = _last_row(memory_world.broker, before)
    assert row.transforms_applied == ("body:/metadata/tenant",)
    assert set(row.transforms_failed) == {"body:/x/y"}


def test_body_transform_refuses_bodies_over_the_limit(proxy, memory_world, tls_upstream):
    with proxy.client(memory_world.token) as client:
        reply = client.post(
            tls_upstream.url("/body", host="api.test"),
            content=b"{" + b" " * (11 * 1024 * 1024) + b"}",
        )
    assert reply.status_code == 413


def test_failures_are_recorded_and_the_request_continues(proxy, memory_world, tls_upstream):
    before = len(memory_world.broker.decisions)
    with proxy.client(memory_world.token) as client:
        reply = client.get(tls_upstream.url("/broken", host="api.test"))
    assert reply.status_code == 200
    row = _last_row(memory_world.broker, before)
    assert row.decision == "allow" and row.capability == "broken"
    assert row.auth_failures == {"failing": "auth_unavailable"}
    assert row.transforms_failed == {
        "header:X-Broken": "cel_error",
        "header:X-From-Query": "cel_error",
    }
    assert row.upstream_status == 200 and row.duration_ms is not None


def test_unmatched_allow_passes_through_untouched_and_audited(
    start_proxy, memory_world, tls_upstream, plain_upstream
):
    proxy = start_proxy(
        caps_text(tls_upstream, plain_upstream, unmatched="allow"), memory_world.broker
    )
    before = len(memory_world.broker.decisions)
    with proxy.client(memory_world.token) as client:
        reply = client.get(
            tls_upstream.url("/elsewhere", host="other.test"),
            headers={"Authorization": "Bearer agent-own"},
        )
    assert reply.status_code == 200
    assert tls_upstream.log.items[-1].header("Authorization") == ["Bearer agent-own"]
    row = _last_row(memory_world.broker, before)
    assert (row.decision, row.capability, row.reason) == ("allow", None, "unmatched")


def test_upstream_401_drops_the_oauth_token(
    start_proxy, memory_world, tls_upstream, plain_upstream
):
    memory_world.broker.add_credential(
        "github",
        "microsoft",
        "ms-access-token-abcdef123",
        kind="oauth2_client_credentials",
        config={"tenant_id": "t", "client_id": "c"},
    )
    caps = caps_text(tls_upstream, plain_upstream).replace(
        "provider: github_pat}", "provider: microsoft}", 1
    )
    proxy = start_proxy(caps, memory_world.broker)
    with proxy.client(memory_world.token) as client:
        reply = client.get(tls_upstream.url("/repos/x?status=401", host="api.test"))
    assert reply.status_code == 401
    assert memory_world.broker.dropped[-1][1] == "github"


def test_plain_http_capability_with_allow_plaintext(proxy, memory_world, plain_upstream):
    with proxy.client(memory_world.token) as client:
        reply = client.get(plain_upstream.url("/x", host="localhost"))
    assert reply.status_code == 200
    assert plain_upstream.log.items[-1].header("X-Plain") == ["yes"]


def test_hot_reload_swaps_a_valid_file_and_keeps_the_last_good_one(
    proxy, memory_world, tls_upstream, plain_upstream, caplog
):
    url = tls_upstream.url("/repos/x", host="api.test")
    original = caps_text(tls_upstream, plain_upstream)

    def status() -> int:
        with proxy.client(memory_world.token) as client:
            return client.get(url).status_code

    def wait_for(expected: int) -> None:
        deadline = time.monotonic() + 5
        while status() != expected:
            assert time.monotonic() < deadline, f"never got {expected}"
            time.sleep(0.2)

    assert status() == 200
    # a valid change (the role loses github-api) is picked up
    proxy.write_caps(original.replace("capabilities: [github-api, jira,", "capabilities: [jira,"))
    wait_for(403)
    # an invalid file is refused with its problems logged; the last good one keeps serving
    with caplog.at_level(logging.ERROR, logger="capgate.reload"):
        proxy.write_caps(original + "\nbogus_key: 1\n")
        time.sleep(1.5)
        assert status() == 403
    assert any("keeping the last good configuration" in r.getMessage() for r in caplog.records)
    proxy.write_caps(original)
    wait_for(200)


def test_credential_stored_for_another_provider_is_not_stamped(
    start_proxy, memory_world, tls_upstream, plain_upstream
):
    # given a capability declaring provider openai for a credential stored as github_pat
    caps = caps_text(tls_upstream, plain_upstream).replace(
        "provider: github_pat}", "provider: openai}", 1
    )
    running = start_proxy(caps, memory_world.broker)
    before = len(memory_world.broker.decisions)
    # when the agent calls it, bringing its own Authorization
    with running.client(memory_world.token) as client:
        reply = client.get(
            tls_upstream.url("/repos/x", host="api.test"),
            headers={"Authorization": "Bearer agent-own"},
        )
    # then nothing is stamped, the agent's value is gone, and the row says why
    assert reply.status_code == 200
    sent = tls_upstream.log.items[-1]
    assert sent.header("Authorization") == []
    assert _last_row(memory_world.broker, before).auth_failures == {"github": "auth_unavailable"}
