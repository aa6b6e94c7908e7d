"""The override table, through the pure function and through the store; tenant isolation."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capgate.broker.credential_rows import CredentialRow
from capgate.broker.credentials import CredentialSpec
from capgate.broker.errors import NotFound
from capgate.broker.resolution import resolve, resolve_names
from capgate.broker.secretvalue import SecretValue

BASE = CredentialRow(
    id="cred_org",
    org_id="org_a",
    name="mail",
    user_id=None,
    user=None,
    provider="google",
    kind="oauth2_authorization_code",
    scopes=(),
    durable_ref="vault_1",
    provider_config={},
    status="active",
    last_minted_at=None,
    last_minted_status=None,
    allow_user_override=False,
    created_at="t",
    updated_at="t",
)


def user_row(user_id: str, **kw) -> CredentialRow:
    return replace(BASE, id=f"cred_{user_id}", user_id=user_id, user=user_id, **kw)


def pick(rows, user_id="alice", org_id="org_a"):
    return resolve(rows, org_id=org_id, name="mail", user_id=user_id)


# -- the four states of the table, pure ---------------------------------------------------


def test_org_row_only_resolves_to_the_org_row_for_everyone():
    assert pick([BASE], "alice") is BASE
    assert pick([BASE], "bob") is BASE


def test_org_row_with_override_and_user_row_gives_the_user_their_row_and_others_the_org_row():
    org = replace(BASE, allow_user_override=True)
    alice = user_row("alice")
    assert pick([org, alice], "alice") is alice
    assert pick([org, alice], "bob") is org


def test_org_row_without_override_wins_over_a_user_row():
    # Unreachable through the store (it refuses the combination); the rule still holds.
    assert pick([BASE, user_row("alice")], "alice") is BASE


def test_user_row_only_resolves_for_that_user_alone():
    alice = user_row("alice")
    assert pick([alice], "alice") is alice
    assert pick([alice], "bob") is None


def test_no_rows_resolve_to_nothing():
    assert pick([], "alice") is None


def test_rows_of_another_org_are_ignored():
    assert pick([replace(BASE, org_id="org_b")], "alice") is None


# -- the same states through the store ---------------------------------------------------


def _code(user=None, override=False) -> CredentialSpec:
    return CredentialSpec(
        name="mail",
        provider="google",
        kind="oauth2_authorization_code",
        user=user,
        provider_config={"client_id": "c"},
        allow_user_override=override,
    )


def test_store_resolution_follows_the_override_table(stores, org):
    alice = stores.workspaces.add_user(org, "alice")
    bob = stores.workspaces.add_user(org, "bob")
    creds = stores.credentials

    def names(user_id):
        return {
            n: r.user
            for n, r in resolve_names(
                creds, org_id=org, user_id=user_id, names=["mail", "none"]
            ).items()
        }

    assert names(alice.id) == {}  # neither
    creds.add(org, _code(user="alice"), SecretValue("rt-a"))
    assert names(alice.id) == {"mail": "alice"} and names(bob.id) == {}  # user only
    creds.add(org, _code(override=True), SecretValue("rt-org"))
    assert names(alice.id) == {"mail": "alice"} and names(bob.id) == {"mail": None}  # both
    creds.delete(org, "mail", "alice")
    assert names(alice.id) == {"mail": None}  # org only


# -- tenant isolation, property-based ----------------------------------------------------

ORGS, USERS = ["o1", "o2", "o3"], ["u1", "u2", "u3"]
rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(ORGS),
        st.sampled_from(["mail", "drive"]),
        st.one_of(st.none(), st.sampled_from(USERS)),
        st.booleans(),
    ),
    max_size=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=rows_strategy,
    org=st.sampled_from(ORGS),
    user=st.sampled_from(USERS),
    name=st.sampled_from(["mail", "drive"]),
)
def test_resolution_never_returns_another_orgs_or_another_users_row(rows, org, user, name):
    table, seen = [], set()
    for i, (o, n, u, override) in enumerate(rows):
        key = (o, n, u)
        if key in seen:
            continue
        seen.add(key)
        table.append(
            replace(BASE, id=f"cred_{i}", org_id=o, name=n, user_id=u, allow_user_override=override)
        )
    chosen = resolve(table, org_id=org, name=name, user_id=user)
    if chosen is not None:
        assert chosen.org_id == org and chosen.name == name
        assert chosen.user_id in (None, user)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(ORGS), st.sampled_from(USERS), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_store_workspaces_only_resolve_their_own_orgs_rows(stores, plan):
    """Random orgs and users each add rows; every workspace resolves only permitted rows."""
    creds, ws = stores.credentials, stores.workspaces
    suffix = f"{len(stores.vault.refs())}"
    workspaces = []
    for org_name, user_name, own_row in plan:
        org_id = stores.control.org_id(f"{org_name}x{suffix}", create=True)
        try:
            ws.get_user(org_id, user_name)
        except NotFound:
            ws.add_user(org_id, user_name)
        name = f"mail{suffix}"
        existing = {(r.user or "") for r in creds.list_credentials(org_id) if r.name == name}
        if own_row and user_name not in existing:
            creds.add(org_id, replace(_code(user=user_name), name=name), SecretValue("rt"))
        elif not own_row and "" not in existing:
            creds.add(org_id, replace(_code(override=True), name=name), SecretValue("rt"))
        _, token = ws.create(org_id, "r", user_name)
        workspaces.append((token, name))
    for token, name in workspaces:
        w = ws.authenticate(token)
        for row in resolve_names(creds, org_id=w.org_id, user_id=w.user_id, names=[name]).values():
            assert row.org_id == w.org_id
            assert row.user_id in (None, w.user_id)
