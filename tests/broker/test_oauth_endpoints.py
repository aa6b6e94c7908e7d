"""Fixed token endpoints, the loudly logged UNSAFE override, and the RFC 7523 assertion."""

from __future__ import annotations

import json
import logging
import traceback

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from capgate.broker.errors import InvalidInput
from capgate.broker.oauth import (
    UNSAFE_TOKEN_ENV,
    Endpoints,
    MintError,
    ServiceAccount,
    classify,
    sign_assertion,
)
from capgate.broker.providers import PROVIDERS
from capgate.broker.secretvalue import SecretValue
from tests.oauth_server import make_service_account

GOOGLE, MICROSOFT = PROVIDERS["google"], PROVIDERS["microsoft"]


@pytest.mark.parametrize(
    ("provider", "config", "url"),
    [
        (GOOGLE, {}, "https://oauth2.googleapis.com/token"),
        (MICROSOFT, {"tenant_id": "contoso"},
         "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"),
        (MICROSOFT, {"tenant_id": "contoso", "cloud": "usgov"},
         "https://login.microsoftonline.us/contoso/oauth2/v2.0/token"),
        (MICROSOFT, {"tenant_id": "contoso", "cloud": "china"},
         "https://login.chinacloudapi.cn/contoso/oauth2/v2.0/token"),
    ],
)  # fmt: skip
def test_token_endpoints_are_fixed_per_provider(provider, config, url):
    assert Endpoints.fixed().token_url(provider, config) == url


def test_the_override_is_announced_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(UNSAFE_TOKEN_ENV, '{"microsoft": "http://127.0.0.1:9/{tenant}/token"}')
    with caplog.at_level(logging.WARNING, logger="capgate"):
        endpoints = Endpoints.from_env()
    assert endpoints.token_url(MICROSOFT, {"tenant_id": "t1"}) == "http://127.0.0.1:9/t1/token"
    assert endpoints.token_url(GOOGLE, {}) == "https://oauth2.googleapis.com/token"
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "UNSAFE" in record.getMessage()


@pytest.mark.parametrize(
    "raw", ["not json", "[]", '{"github_pat": "http://x"}', '{"google": "ftp://x"}']
)
def test_a_bad_override_is_refused(monkeypatch, raw):
    monkeypatch.setenv(UNSAFE_TOKEN_ENV, raw)
    with pytest.raises(InvalidInput):
        Endpoints.from_env()


def test_the_assertion_has_googles_header_and_claims():
    document, public_pem = make_service_account("robot@proj.iam.gserviceaccount.com", "kid-7")
    account = ServiceAccount.parse(SecretValue(document))
    assertion = sign_assertion(
        account, "https://oauth2.googleapis.com/token", ["a", "b"], subject="ceo@example.com",
        now=1_700_000_000,
    )  # fmt: skip
    token = jwt.decode(assertion.reveal(), RSAKey.import_key(public_pem))
    assert token.header == {"alg": "RS256", "typ": "JWT", "kid": "kid-7"}
    claims = token.claims
    assert claims["iss"] == "robot@proj.iam.gserviceaccount.com"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["scope"] == "a b"
    assert claims["sub"] == "ceo@example.com"
    assert claims["exp"] - claims["iat"] == 3600 and claims["iat"] == 1_700_000_000
    assert "BEGIN" not in repr(account)


def test_no_subject_means_no_sub_claim():
    document, public_pem = make_service_account("robot@proj.iam.gserviceaccount.com", "kid-7")
    account = ServiceAccount.parse(SecretValue(document))
    assertion = sign_assertion(account, "https://oauth2.googleapis.com/token", ["a"])
    assert "sub" not in jwt.decode(assertion.reveal(), RSAKey.import_key(public_pem)).claims


@pytest.mark.parametrize("raw", ["", "[]", "{}", '{"client_email": "x"}', "not json"])
def test_an_unparseable_service_account_is_terminal(raw):
    with pytest.raises(MintError) as failure:
        ServiceAccount.parse(SecretValue(raw or " "))
    assert failure.value.terminal and str(failure.value) == "unparseable_durable_value"


def test_override_json_object_round_trip(monkeypatch):
    urls = {"google": "http://127.0.0.1:1/token", "microsoft": "http://127.0.0.1:2/token"}
    monkeypatch.setenv(UNSAFE_TOKEN_ENV, json.dumps(urls))
    assert dict(Endpoints.from_env().token_overrides) == urls


def test_a_token_endpoint_error_body_never_reaches_the_exception():
    canary = "CANARY-echoed-9f0c"
    body = {"error": "invalid_grant", "error_description": f"refresh_token={canary}"}
    for response in (
        httpx.Response(400, json=body),
        httpx.Response(400, text=f"<p>{canary}</p>"),
        httpx.Response(500, json={"error": canary}),
    ):
        with pytest.raises(MintError) as failure:
            classify(response)
        error = failure.value
        shown = "".join(traceback.format_exception(error)) + repr(error) + str(error.args)
        assert canary not in shown
