"""Re-uploading a value waits for a mint in flight, so the mint cannot undo the recovery."""

from __future__ import annotations

import threading
import time

from capgate.broker.credential_rows import CredentialSpec
from capgate.broker.secretvalue import SecretValue


def test_update_waits_for_the_credential_lock_and_wins(stores, org):
    row = stores.credentials.add(
        org, CredentialSpec("gh", "github_pat", "api_key"), SecretValue("old-value-0123")
    )
    lock_held, release = threading.Event(), threading.Event()

    def mint_that_fails_terminally():
        # What a mint does: lock, fail against the old value, flip to needs_reauth, unlock.
        with stores.control.credential_lock(row.id):
            lock_held.set()
            release.wait(5)
            stores.credentials.set_status(row.id, "needs_reauth", "invalid_grant")

    minter = threading.Thread(target=mint_that_fails_terminally)
    minter.start()
    lock_held.wait(5)
    updated_at: list[float] = []
    updater = threading.Thread(
        target=lambda: (
            stores.credentials.update(org, "gh", None, SecretValue("new-value-4567")),
            updated_at.append(time.monotonic()),
        )
    )
    updater.start()
    time.sleep(0.3)
    assert updated_at == [], "update must wait while a mint holds the credential lock"
    release.set()
    minter.join(5)
    updater.join(5)

    final = stores.credentials.get(org, "gh")
    assert final.status == "active"
    assert stores.credentials.durable_value(final).reveal() == "new-value-4567"
