"""The "bare" baseline: mitmproxy with exactly the addons capgate's runner loads, and no
capgate addon, with the same mitmproxy options and logging set-up.

    python -m tests.bench.bare --home H --listen-port P --upstream-ca CA.pem

Stock mitmdump loads about 40 addons, so a ratio against it flatters capgate; the ratio
against this one is capgate's own cost. Writes its CA into H/ca like capgate does.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from mitmproxy import master, options

from capgate.proxy.addon.runner import (
    ProxySettings,
    ca_cert_path,
    configure_logging,
    mitmproxy_addons,
    mitmproxy_options,
)


async def run(settings: ProxySettings) -> None:
    ca_cert_path(settings.home)
    m = master.Master(options.Options(), with_termlog=False)
    m.addons.add(*mitmproxy_addons())
    m.options.update(**mitmproxy_options(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, m.shutdown)
    await m.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--upstream-ca", type=Path, required=True)
    args = parser.parse_args()
    configure_logging(access_log=False)
    settings = ProxySettings(
        home=args.home,
        caps_path=Path("/dev/null"),
        listen_port=args.listen_port,
        upstream_cas=(args.upstream_ca,),
    )
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
