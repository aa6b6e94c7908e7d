"""The closed provider and kind enums, their legal pairs, and each provider's wire shape.

Providers are data: adding one is a row in PROVIDERS plus a test. See PROVIDERS.md.
Nothing here touches a store or the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Kind(StrEnum):
    API_KEY = "api_key"
    BASIC_AUTH = "basic_auth"
    QUERY_API_KEY = "query_api_key"
    OAUTH2_CLIENT_CREDENTIALS = "oauth2_client_credentials"
    OAUTH2_AUTHORIZATION_CODE = "oauth2_authorization_code"
    OAUTH2_JWT_BEARER = "oauth2_jwt_bearer"
    OAUTH2_JWT_BEARER_WITH_SUBJECT = "oauth2_jwt_bearer_with_subject"


# Only these kinds may have user-scoped rows (DESIGN.md, Org-scoped and user-scoped).
USER_SCOPABLE_KINDS = frozenset({Kind.OAUTH2_AUTHORIZATION_CODE})

# provider_config keys each kind needs or accepts, whatever the provider.
KIND_REQUIRED_CONFIG: Mapping[Kind, frozenset[str]] = MappingProxyType(
    {
        Kind.OAUTH2_AUTHORIZATION_CODE: frozenset({"client_id"}),
        Kind.OAUTH2_CLIENT_CREDENTIALS: frozenset({"client_id"}),
        Kind.OAUTH2_JWT_BEARER_WITH_SUBJECT: frozenset({"subject"}),
    }
)
KIND_OPTIONAL_CONFIG: Mapping[Kind, frozenset[str]] = MappingProxyType(
    {
        # client_secret_ref is written by capgate itself, never by the operator.
        Kind.OAUTH2_AUTHORIZATION_CODE: frozenset({"client_secret_ref", "redirect_uri"}),
        Kind.BASIC_AUTH: frozenset({"username"}),
    }
)


@dataclass(frozen=True)
class OAuthEndpoints:
    """Fixed OAuth endpoints; `{tenant}` and `{login}` are filled from provider_config."""

    token: str
    authorize: str | None = None
    default_scope: str | None = None  # client_credentials scope when none is configured
    # Authorization-request quirks (PROVIDERS.md, OAuth flows): extra query parameters,
    # and scopes that must be requested for a refresh token to be issued.
    authorize_params: tuple[tuple[str, str], ...] = ()
    consent_scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifyCall:
    """One safe, read-only call that shows a static credential works (`cred verify`).

    `json_ok`: the provider answers 200 for a bad token too and says `"ok": false` in
    the body (Slack), so success needs `"ok": true` as well. OAuth kinds verify by minting.
    """

    method: str
    url: str
    json_ok: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.url}"


@dataclass(frozen=True)
class Provider:
    """One provider: legal kinds and where its credential goes on the wire.

    `value_format` renders the wire value from `{v}` (the stored or minted value) or
    `{basic}` (base64 of username:value). Exactly one of `header` / `query_param` is set.
    """

    slug: str
    kinds: frozenset[Kind]
    header: str | None = "Authorization"
    query_param: str | None = None
    value_format: str = "Bearer {v}"
    companion_headers: tuple[tuple[str, str], ...] = ()  # fixed, set when absent
    config_headers: tuple[tuple[str, str], ...] = ()  # (config key, header), set when absent
    config_query: tuple[tuple[str, str], ...] = ()  # (config key, param), set when absent
    required_config: frozenset[str] = frozenset()
    default_username: str | None = None
    default_hosts: tuple[str, ...] = ()
    oauth: OAuthEndpoints | None = None
    verify: VerifyCall | None = None  # static kinds; None: the provider has no fixed host
    # Further headers and query parameters the provider accepts a credential in, beside
    # the one capgate stamps (the anthropic SDK sends `Authorization: Bearer` beside
    # `x-api-key`): `auth` removes the agent's values from all of them.
    also_accepts_headers: tuple[str, ...] = ()
    also_accepts_query: tuple[str, ...] = ()

    @property
    def credential_headers(self) -> tuple[str, ...]:
        """Every header this provider reads a credential from; Authorization always."""
        names = [self.header] if self.header else []
        names += [*self.also_accepts_headers, "Authorization"]
        return tuple(dict.fromkeys(names, None))

    @property
    def credential_query(self) -> tuple[str, ...]:
        """Every query parameter this provider reads a credential from."""
        names = [self.query_param] if self.query_param else []
        return tuple(dict.fromkeys([*names, *self.also_accepts_query], None))

    @property
    def accepted_config(self) -> frozenset[str]:
        keys = {key for key, _ in self.config_headers} | {key for key, _ in self.config_query}
        return frozenset(keys | self.required_config)


def _api_key(
    slug: str, header: str = "Authorization", fmt: str = "Bearer {v}", **kw: Any
) -> Provider:
    return Provider(
        slug=slug, kinds=frozenset({Kind.API_KEY}), header=header, value_format=fmt, **kw
    )


def _basic(slug: str, **kw: Any) -> Provider:
    return Provider(
        slug=slug, kinds=frozenset({Kind.BASIC_AUTH}), value_format="Basic {basic}", **kw
    )


# Microsoft's national clouds: a closed choice in provider_config["cloud"].
MICROSOFT_CLOUDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {  # cloud -> (login host, Graph resource for the client-credentials .default scope)
        "global": ("login.microsoftonline.com", "https://graph.microsoft.com"),
        "usgov": ("login.microsoftonline.us", "https://graph.microsoft.us"),
        "china": ("login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
    }
)

_PROVIDER_LIST: tuple[Provider, ...] = (
    Provider(
        slug="google",
        kinds=frozenset(
            {
                Kind.OAUTH2_JWT_BEARER,
                Kind.OAUTH2_JWT_BEARER_WITH_SUBJECT,
                Kind.OAUTH2_AUTHORIZATION_CODE,
            }
        ),
        default_hosts=("*.googleapis.com",),
        oauth=OAuthEndpoints(
            token="https://oauth2.googleapis.com/token",
            authorize="https://accounts.google.com/o/oauth2/v2/auth",
            authorize_params=(("access_type", "offline"), ("prompt", "consent")),
        ),
        also_accepts_headers=("x-goog-api-key",),
        also_accepts_query=("access_token", "key"),
    ),
    Provider(
        slug="microsoft",
        kinds=frozenset({Kind.OAUTH2_AUTHORIZATION_CODE, Kind.OAUTH2_CLIENT_CREDENTIALS}),
        required_config=frozenset({"tenant_id"}),
        config_query=(),
        default_hosts=("graph.microsoft.com",),
        oauth=OAuthEndpoints(
            token="https://{login}/{tenant}/oauth2/v2.0/token",
            authorize="https://{login}/{tenant}/oauth2/v2.0/authorize",
            default_scope="{graph}/.default",
            consent_scopes=("offline_access",),
        ),
    ),
    _api_key(
        "anthropic",
        header="x-api-key",
        fmt="{v}",
        companion_headers=(("anthropic-version", "2023-06-01"),),
        default_hosts=("api.anthropic.com",),
        verify=VerifyCall("GET", "https://api.anthropic.com/v1/models"),
        also_accepts_headers=("Authorization",),
    ),
    _api_key(
        "openai",
        config_headers=(("organization", "OpenAI-Organization"), ("project", "OpenAI-Project")),
        default_hosts=("api.openai.com",),
        verify=VerifyCall("GET", "https://api.openai.com/v1/models"),
    ),
    _api_key(
        "gemini",
        header="x-goog-api-key",
        fmt="{v}",
        default_hosts=("generativelanguage.googleapis.com",),
        verify=VerifyCall("GET", "https://generativelanguage.googleapis.com/v1beta/models"),
        also_accepts_query=("key", "access_token"),
    ),
    _api_key(
        "azure_openai",
        header="api-key",
        fmt="{v}",
        config_query=(("api_version", "api-version"),),
        also_accepts_headers=("Authorization",),
    ),
    _api_key(
        "slack_bot",
        default_hosts=("slack.com",),
        verify=VerifyCall("POST", "https://slack.com/api/auth.test", json_ok=True),
        also_accepts_query=("token",),
    ),
    _api_key(
        "github_pat",
        companion_headers=(("X-GitHub-Api-Version", "2022-11-28"),),
        default_hosts=("api.github.com",),
        verify=VerifyCall("GET", "https://api.github.com/user"),
        also_accepts_query=("access_token",),
    ),
    _api_key(
        "notion_token",
        companion_headers=(("Notion-Version", "2022-06-28"),),
        config_headers=(("notion_version", "Notion-Version"),),
        default_hosts=("api.notion.com",),
        verify=VerifyCall("GET", "https://api.notion.com/v1/users/me"),
    ),
    _api_key("linear_pat", fmt="{v}", default_hosts=("api.linear.app",)),
    _api_key(
        "hubspot_pat",
        default_hosts=("api.hubapi.com",),
        verify=VerifyCall("GET", "https://api.hubapi.com/account-info/v3/details"),
        also_accepts_query=("hapikey",),
    ),
    _api_key(
        "discord_bot",
        fmt="Bot {v}",
        companion_headers=(("User-Agent", "DiscordBot (https://github.com/capgate, 0.1)"),),
        config_headers=(("user_agent", "User-Agent"),),
        default_hosts=("discord.com",),
        verify=VerifyCall("GET", "https://discord.com/api/v10/users/@me"),
    ),
    _api_key(
        "gitlab_token",
        header="PRIVATE-TOKEN",
        fmt="{v}",
        default_hosts=("gitlab.com",),
        verify=VerifyCall("GET", "https://gitlab.com/api/v4/user"),
        also_accepts_headers=("JOB-TOKEN",),
        also_accepts_query=("private_token", "access_token", "job_token"),
    ),
    _api_key(
        "sendgrid",
        default_hosts=("api.sendgrid.com",),
        verify=VerifyCall("GET", "https://api.sendgrid.com/v3/scopes"),
    ),
    _api_key(
        "pagerduty",
        fmt="Token token={v}",
        companion_headers=(("Accept", "application/vnd.pagerduty+json;version=2"),),
        default_hosts=("api.pagerduty.com",),
        verify=VerifyCall("GET", "https://api.pagerduty.com/abilities"),
    ),
    _api_key("grafana", config_headers=(("org_id", "X-Grafana-Org-Id"),)),
    _api_key("databricks"),
    _api_key(
        "nvd",
        header="apiKey",
        fmt="{v}",
        default_hosts=("services.nvd.nist.gov",),
        verify=VerifyCall(
            "GET", "https://services.nvd.nist.gov/rest/json/cves/2.0?resultsPerPage=1"
        ),
    ),
    _api_key(
        "elevenlabs",
        header="xi-api-key",
        fmt="{v}",
        default_hosts=("api.elevenlabs.io",),
        verify=VerifyCall("GET", "https://api.elevenlabs.io/v1/user"),
    ),
    _api_key(
        "airtable",
        default_hosts=("api.airtable.com",),
        verify=VerifyCall("GET", "https://api.airtable.com/v0/meta/whoami"),
    ),
    _api_key("splunk"),
    _api_key(
        "newrelic",
        header="API-Key",
        fmt="{v}",
        default_hosts=("api.newrelic.com", "api.eu.newrelic.com"),
        also_accepts_headers=("X-Api-Key", "X-Query-Key"),
    ),
    _api_key("virustotal", header="x-apikey", fmt="{v}", default_hosts=("www.virustotal.com",)),
    _api_key("elasticsearch", fmt="ApiKey {v}"),
    _basic("jira", required_config=frozenset({"username"}), default_hosts=("*.atlassian.net",)),
    _basic(
        "confluence", required_config=frozenset({"username"}), default_hosts=("*.atlassian.net",)
    ),
    _basic(
        "gitlab_git_https",
        default_username="oauth2",
        default_hosts=("gitlab.com",),
        verify=VerifyCall("GET", "https://gitlab.com/api/v4/user"),
    ),
    _basic(
        "github_git_https",
        default_username="x-access-token",
        default_hosts=("github.com",),
        verify=VerifyCall("GET", "https://api.github.com/user"),
    ),
    Provider(
        slug="google_search",
        kinds=frozenset({Kind.QUERY_API_KEY}),
        header=None,
        query_param="key",
        value_format="{v}",
        config_query=(("cx", "cx"),),
        default_hosts=("www.googleapis.com",),
        also_accepts_headers=("x-goog-api-key",),
        also_accepts_query=("access_token",),
    ),
)

PROVIDERS: Mapping[str, Provider] = MappingProxyType({p.slug: p for p in _PROVIDER_LIST})
PROVIDER_SLUGS: tuple[str, ...] = tuple(p.slug for p in _PROVIDER_LIST)


@dataclass(frozen=True)
class FieldError:
    """A rejected field of a credential definition, worded for the operator."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def accepted_config(provider: Provider, kind: Kind) -> frozenset[str]:
    extra = {"cloud"} if provider.slug == "microsoft" else set()
    return (
        provider.accepted_config
        | KIND_REQUIRED_CONFIG.get(kind, frozenset())
        | KIND_OPTIONAL_CONFIG.get(kind, frozenset())
        | extra
    )


def required_config(provider: Provider, kind: Kind) -> frozenset[str]:
    return provider.required_config | KIND_REQUIRED_CONFIG.get(kind, frozenset())


def validate_credential_spec(
    provider: str, kind: str, config: Mapping[str, str], *, user_scoped: bool
) -> list[FieldError]:
    """Every reason this (provider, kind, provider_config, scope) cannot be stored.

    An empty list means legal. Callers must check this before writing anything to the vault.
    """
    errors: list[FieldError] = []
    spec = PROVIDERS.get(provider)
    if spec is None:
        errors.append(
            FieldError(
                "provider", f"unknown provider {provider!r}; one of: " + ", ".join(PROVIDER_SLUGS)
            )
        )
    try:
        kind_enum = Kind(kind)
    except ValueError:
        errors.append(
            FieldError(
                "kind", f"unknown kind {kind!r}; one of: " + ", ".join(k.value for k in Kind)
            )
        )
        return errors
    if spec is None:
        return errors
    if kind_enum not in spec.kinds:
        legal = ", ".join(sorted(k.value for k in spec.kinds))
        errors.append(
            FieldError(
                "kind", f"provider {provider!r} does not take kind {kind!r}; legal kinds: {legal}"
            )
        )
        return errors
    if user_scoped and kind_enum not in USER_SCOPABLE_KINDS:
        errors.append(
            FieldError(
                "user",
                f"kind {kind!r} is always org-scoped; only "
                "oauth2_authorization_code credentials may belong to a user",
            )
        )
    for key in sorted(required_config(spec, kind_enum) - set(config)):
        errors.append(FieldError(f"config.{key}", f"required for {provider}/{kind}"))
    for key in sorted(set(config) - accepted_config(spec, kind_enum)):
        accepted = ", ".join(sorted(accepted_config(spec, kind_enum))) or "none"
        errors.append(
            FieldError(
                f"config.{key}", f"not a setting of {provider}/{kind} (accepted: {accepted})"
            )
        )
    if provider == "microsoft" and config.get("cloud", "global") not in MICROSOFT_CLOUDS:
        errors.append(FieldError("config.cloud", "one of: " + ", ".join(MICROSOFT_CLOUDS)))
    for key, value in config.items():
        if not value or any(ch in value for ch in "\r\n\0"):
            errors.append(FieldError(f"config.{key}", "must be a non-empty single-line value"))
    return errors


def wire_username(provider: Provider, config: Mapping[str, str]) -> str:
    """The Basic-auth username: from provider_config, else the provider's default."""
    return config.get("username") or provider.default_username or ""


def oauth_urls(provider: Provider, config: Mapping[str, str]) -> OAuthEndpoints:
    """The provider's fixed OAuth endpoints with tenant and national cloud filled in."""
    if provider.oauth is None:
        raise ValueError(f"provider {provider.slug!r} has no OAuth endpoints")
    login, graph = MICROSOFT_CLOUDS[config.get("cloud", "global")]
    fill = {"login": login, "tenant": config.get("tenant_id", ""), "graph": graph}
    ep = provider.oauth
    return OAuthEndpoints(
        token=ep.token.format(**fill),
        authorize=ep.authorize.format(**fill) if ep.authorize else None,
        default_scope=ep.default_scope.format(**fill) if ep.default_scope else None,
        authorize_params=ep.authorize_params,
        consent_scopes=ep.consent_scopes,
    )
