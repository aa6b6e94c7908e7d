"""Everything the store half of the broker offers, opened together for one home.

`Stores.open(home)` is what the CLI and `Broker.open` call: one control-store connection,
one vault, and the row services built on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .apikeys import ApiKeys
from .changes import ChangeWatcher, PgChangeWatcher
from .credentials import Credentials
from .home import Home
from .hosted_consent import HostedConsents
from .secrets import Secrets
from .sessions import Sessions
from .store import ControlStore
from .vault import Vault
from .workspaces import Workspaces


@dataclass(frozen=True)
class Stores:
    home: Home
    control: ControlStore
    vault: Vault
    credentials: Credentials
    secrets: Secrets
    workspaces: Workspaces
    changes: ChangeWatcher | PgChangeWatcher
    api_keys: ApiKeys
    sessions: Sessions
    consents: HostedConsents

    @classmethod
    def open(cls, root: Path | Home) -> Stores:
        """Open an initialised home (NotInitialized / KeyFileError otherwise)."""
        home = root if isinstance(root, Home) else Home(Path(root))
        home.require_initialized()
        vault = Vault.open(home)
        control = ControlStore.open(home)
        workspaces = Workspaces(control)
        credentials = Credentials(control, vault)
        return cls(
            home=home,
            control=control,
            vault=vault,
            credentials=credentials,
            secrets=Secrets(control, vault),
            workspaces=workspaces,
            changes=ChangeWatcher.for_store(control),
            api_keys=ApiKeys(control, workspaces),
            sessions=Sessions(control, workspaces),
            consents=HostedConsents(control, vault, credentials),
        )

    def close(self) -> None:
        self.workspaces.close()
        self.changes.close()
        self.control.close()
        self.vault.close()
