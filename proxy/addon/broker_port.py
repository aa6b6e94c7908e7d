"""What the proxy needs from the broker: the `Broker` facade's methods, as a Protocol.

The addon depends on this and nothing else of broker/, so that `capgate replay` and the
unit tests can run it with `MemoryBroker` and the proxy runs it with `Broker`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from capgate.broker.types import Activation, MintOutcome, PolicyDecision, Workspace


class BrokerPort(Protocol):
    def authenticate(self, token: str) -> Workspace | None: ...

    def activate(
        self,
        workspace: Workspace,
        credential_names: Iterable[str],
        secret_names: Iterable[str],
    ) -> Activation: ...

    async def mint(self, activation: Activation, credential_name: str) -> MintOutcome: ...

    def drop_token(self, activation: Activation, credential_name: str) -> None: ...

    def generation(self) -> int: ...

    def record_decision(self, decision: PolicyDecision) -> None: ...

    def decisions_writable(self) -> bool:
        """False while policy_decision rows cannot be written (cheap: a flag read)."""
        ...

    def close(self) -> None: ...
