"""The closed enums and legal (provider, kind) pairs of PROVIDERS.md."""

from __future__ import annotations

import pytest

from capgate.broker.providers import (
    PROVIDERS,
    Kind,
    oauth_urls,
    validate_credential_spec,
)

API_KEY_PROVIDERS = [
    "anthropic",
    "openai",
    "gemini",
    "azure_openai",
    "slack_bot",
    "github_pat",
    "notion_token",
    "linear_pat",
    "hubspot_pat",
    "discord_bot",
    "gitlab_token",
    "sendgrid",
    "pagerduty",
    "grafana",
    "databricks",
    "nvd",
    "elevenlabs",
    "airtable",
    "splunk",
    "newrelic",
    "virustotal",
    "elasticsearch",
]
LEGAL = {
    "google": {"oauth2_jwt_bearer", "oauth2_jwt_bearer_with_subject", "oauth2_authorization_code"},
    "microsoft": {"oauth2_authorization_code", "oauth2_client_credentials"},
    **{slug: {"api_key"} for slug in API_KEY_PROVIDERS},
    **{
        slug: {"basic_auth"}
        for slug in ("jira", "confluence", "gitlab_git_https", "github_git_https")
    },
    "google_search": {"query_api_key"},
}
MINIMAL_CONFIG = {
    ("microsoft", "oauth2_authorization_code"): {"client_id": "c", "tenant_id": "t"},
    ("microsoft", "oauth2_client_credentials"): {"client_id": "c", "tenant_id": "t"},
    ("google", "oauth2_authorization_code"): {"client_id": "c"},
    ("google", "oauth2_jwt_bearer_with_subject"): {"subject": "a@example.com"},
    ("jira", "basic_auth"): {"username": "a@example.com"},
    ("confluence", "basic_auth"): {"username": "a@example.com"},
}


def test_provider_enum_is_exactly_the_documented_set():
    assert set(PROVIDERS) == set(LEGAL)


@pytest.mark.parametrize("provider", sorted(LEGAL))
@pytest.mark.parametrize("kind", [k.value for k in Kind])
def test_only_documented_pairs_are_legal(provider, kind):
    config = MINIMAL_CONFIG.get((provider, kind), {})
    errors = validate_credential_spec(provider, kind, config, user_scoped=False)
    assert (errors == []) == (kind in LEGAL[provider])


def test_unknown_provider_and_kind_are_field_errors():
    errors = validate_credential_spec("acme", "magic", {}, user_scoped=False)
    assert {e.field for e in errors} == {"provider", "kind"}


@pytest.mark.parametrize("kind", ["api_key", "basic_auth", "query_api_key"])
def test_static_kinds_cannot_be_user_scoped(kind):
    provider = {
        "api_key": "openai",
        "basic_auth": "github_git_https",
        "query_api_key": "google_search",
    }
    errors = validate_credential_spec(provider[kind], kind, {}, user_scoped=True)
    assert [e.field for e in errors] == ["user"]


def test_authorization_code_may_be_user_scoped():
    config = {"client_id": "c", "tenant_id": "t"}
    assert (
        validate_credential_spec("microsoft", "oauth2_authorization_code", config, user_scoped=True)
        == []
    )


def test_missing_required_config_names_the_field():
    errors = validate_credential_spec("jira", "basic_auth", {}, user_scoped=False)
    assert [str(e) for e in errors] == ["config.username: required for jira/basic_auth"]


def test_unknown_config_key_is_rejected():
    errors = validate_credential_spec("openai", "api_key", {"usernme": "x"}, user_scoped=False)
    assert [e.field for e in errors] == ["config.usernme"]


def test_config_values_cannot_carry_line_breaks():
    errors = validate_credential_spec(
        "jira", "basic_auth", {"username": "a\r\nX-Evil: 1"}, user_scoped=False
    )
    assert [e.field for e in errors] == ["config.username"]


def test_microsoft_national_cloud_is_a_closed_choice():
    base = {"client_id": "c", "tenant_id": "t"}
    ok = validate_credential_spec(
        "microsoft", "oauth2_client_credentials", {**base, "cloud": "usgov"}, user_scoped=False
    )
    bad = validate_credential_spec(
        "microsoft",
        "oauth2_client_credentials",
        {**base, "cloud": "evil.example"},
        user_scoped=False,
    )
    assert ok == [] and [e.field for e in bad] == ["config.cloud"]
    urls = oauth_urls(PROVIDERS["microsoft"], {**base, "cloud": "usgov"})
    assert urls.token == "https://login.microsoftonline.us/t/oauth2/v2.0/token"
