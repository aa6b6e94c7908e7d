"""The upstream's identity: the TLS server name capgate sends, and verifies, is the host
the policy matched, never the agent's own ClientHello SNI.

mitmproxy takes the upstream SNI (and with it the name the upstream certificate is
checked against) from the agent's ClientHello unless one is set: an agent could CONNECT
to `api.example` with SNI `other.example` and have the credential of `api.example` go to
whatever answers for `other.example` behind an SNI router, or to a server holding a valid
certificate for another name. `server_connect` runs before any TLS with the upstream
starts; the address it sees is the destination capgate pinned (`pin_destination`), so
that is the name. This addon must be loaded before any addon that rewrites addresses
(a test resolver) and before mitmproxy's `tlsconfig`, which keeps an SNI already set.
"""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping

from mitmproxy import connection, tls
from mitmproxy.proxy import server_hooks


class UpstreamIdentity:
    name = "capgate-upstream-identity"

    def __init__(self) -> None:
        self._pinned: MutableMapping[connection.Server, str] = weakref.WeakKeyDictionary()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None:
            return
        host = str(server.address[0])
        server.sni = host
        self._pinned[server] = host

    def tls_start_server(self, data: tls.TlsData) -> None:
        """The pinned name again, right before the handshake: nothing between
        `server_connect` and here may have changed it."""
        server = data.conn
        if isinstance(server, connection.Server) and server in self._pinned:
            server.sni = self._pinned[server]
