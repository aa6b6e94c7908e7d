"""Wire shapes of every provider (PROVIDERS.md, "Wire shapes"), one table-driven test."""

from __future__ import annotations

import base64

import pytest

from capgate.broker.minting import MINTERS, OAuthMinter, StaticMinter, bearer_wire
from capgate.broker.providers import PROVIDER_SLUGS, PROVIDERS, Kind
from capgate.broker.secretvalue import SecretValue
from capgate.broker.types import ResolvedCredential, WireCredential

V = "tok-1234567890"
B64 = base64.b64encode

# provider -> (kind, config, headers, query, companion headers, companion query)
EXPECTED: dict[str, tuple] = {
    "google": ("oauth2_jwt_bearer", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "microsoft": ("oauth2_client_credentials", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "anthropic": ("api_key", {}, {"x-api-key": V}, {}, {"anthropic-version": "2023-06-01"}, {}),
    "openai": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "gemini": ("api_key", {}, {"x-goog-api-key": V}, {}, {}, {}),
    "azure_openai": ("api_key", {}, {"api-key": V}, {}, {}, {}),
    "slack_bot": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "github_pat": (
        "api_key", {}, {"Authorization": f"Bearer {V}"}, {},
        {"X-GitHub-Api-Version": "2022-11-28"}, {},
    ),
    "notion_token": (
        "api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {"Notion-Version": "2022-06-28"}, {},
    ),
    "linear_pat": ("api_key", {}, {"Authorization": V}, {}, {}, {}),
    "hubspot_pat": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "discord_bot": (
        "api_key", {}, {"Authorization": f"Bot {V}"}, {},
        {"User-Agent": "DiscordBot (https://github.com/capgate, 0.1)"}, {},
    ),
    "gitlab_token": ("api_key", {}, {"PRIVATE-TOKEN": V}, {}, {}, {}),
    "sendgrid": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "pagerduty": (
        "api_key", {}, {"Authorization": f"Token token={V}"}, {},
        {"Accept": "application/vnd.pagerduty+json;version=2"}, {},
    ),
    "grafana": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "databricks": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "nvd": ("api_key", {}, {"apiKey": V}, {}, {}, {}),
    "elevenlabs": ("api_key", {}, {"xi-api-key": V}, {}, {}, {}),
    "airtable": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "splunk": ("api_key", {}, {"Authorization": f"Bearer {V}"}, {}, {}, {}),
    "newrelic": ("api_key", {}, {"API-Key": V}, {}, {}, {}),
    "virustotal": ("api_key", {}, {"x-apikey": V}, {}, {}, {}),
    "elasticsearch": ("api_key", {}, {"Authorization": f"ApiKey {V}"}, {}, {}, {}),
    "jira": (
        "basic_auth", {"username": "me@example.com"},
        {"Authorization": "Basic " + B64(f"me@example.com:{V}".encode()).decode()}, {}, {}, {},
    ),
    "confluence": (
        "basic_auth", {"username": "me@example.com"},
        {"Authorization": "Basic " + B64(f"me@example.com:{V}".encode()).decode()}, {}, {}, {},
    ),
    "gitlab_git_https": (
        "basic_auth", {}, {"Authorization": "Basic " + B64(f"oauth2:{V}".encode()).decode()},
        {}, {}, {},
    ),
    "github_git_https": (
        "basic_auth", {},
        {"Authorization": "Basic " + B64(f"x-access-token:{V}".encode()).decode()}, {}, {}, {},
    ),
    "google_search": ("query_api_key", {"cx": "engine-1"}, {}, {"key": V}, {}, {"cx": "engine-1"}),
}  # fmt: skip


def cred(provider: str, kind: str, config: dict | None = None) -> ResolvedCredential:
    return ResolvedCredential(
        id="cred_1", org_id="org_1", name="c", provider=provider, kind=kind, user_id=None,
        status="active", provider_config=config or {},
    )  # fmt: skip


def render(provider: str, kind: str, config: dict) -> WireCredential:
    spec = PROVIDERS[provider]
    minter = MINTERS[Kind(kind)]
    if isinstance(minter, StaticMinter):
        return minter.wire(spec, cred(provider, kind, config), SecretValue(V))
    return bearer_wire(spec, cred(provider, kind, config), SecretValue(V))


def revealed(pairs) -> dict[str, str]:
    return {k: v.reveal() for k, v in pairs}


def test_the_table_covers_every_provider_in_the_enum():
    assert set(EXPECTED) == set(PROVIDER_SLUGS)


@pytest.mark.parametrize("provider", sorted(EXPECTED))
def test_wire_shape_matches_providers_md(provider):
    kind, config, headers, query, companions, companion_query = EXPECTED[provider]
    wire = render(provider, kind, config)
    assert revealed(wire.headers) == headers
    assert revealed(wire.query) == query
    assert dict(wire.companion_headers) == companions
    assert dict(wire.companion_query) == companion_query
    assert wire.oauth == isinstance(MINTERS[Kind(kind)], OAuthMinter)
    assert V.encode() in {p.value for p in wire.scrub}


def test_optional_companions_come_from_provider_config():
    wire = render("openai", "api_key", {"organization": "org-9", "project": "proj-2"})
    assert dict(wire.companion_headers) == {
        "OpenAI-Organization": "org-9",
        "OpenAI-Project": "proj-2",
    }


def test_configured_version_replaces_the_default_companion():
    wire = render("notion_token", "api_key", {"notion_version": "2025-09-03"})
    assert dict(wire.companion_headers) == {"Notion-Version": "2025-09-03"}


def test_azure_api_version_is_a_companion_query_param():
    wire = render("azure_openai", "api_key", {"api_version": "2024-10-21"})
    assert dict(wire.companion_query) == {"api-version": "2024-10-21"}


def test_basic_auth_scrubs_the_raw_value_and_the_base64_pair():
    wire = render("jira", "basic_auth", {"username": "me@example.com"})
    forms = {p.value for p in wire.scrub}
    assert V.encode() in forms
    assert B64(f"me@example.com:{V}".encode()) in forms
    assert all(p.label == "credential:c" for p in wire.scrub)


def test_wire_values_do_not_print():
    wire = render("github_pat", "api_key", {})
    assert V not in repr(wire) and V not in str(wire)
