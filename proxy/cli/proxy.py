"""Proxy commands: `capgate proxy`, `capgate ca` (`exec` and `env` live in agent.py,
`decisions` in decisions.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from capgate.broker.errors import CapgateError
from capgate.broker.home import Home

if TYPE_CHECKING:
    from capgate.caps import CapsConfig

# mitmproxy, CEL and the addon are imported inside the commands that run them, so that
# `capgate --help` and the light commands start fast.

logger = logging.getLogger("capgate.proxy")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

caps_option = click.option(
    "--caps",
    "caps_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The caps.yaml file.",
)
upstream_ca_option = click.option(
    "--upstream-ca",
    "upstream_cas",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A PEM CA to trust for upstream TLS, besides the public roots (repeatable).",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def check_caps(path: Path) -> CapsConfig:
    from capgate.caps import CapsError

    from ..addon.reload import preload

    try:
        return preload(path)
    except CapsError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{path} is not a valid caps file", 1)
        raise  # unreachable: _fail raises


def _parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8080", param_hint=flag)
    return host.strip("[]") or "127.0.0.1", int(port)


def check_port_free(host: str, port: int) -> None:
    """Exit 1 with `error: HOST:PORT is in use` before mitmproxy starts (it would log the
    failure and keep running without a listener)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # mitmproxy sets SO_REUSEADDR too: a socket in TIME_WAIT is not "in use"
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                _fail(f"{shown} is in use", 1)
            _fail(f"cannot listen on {shown}: {exc.strerror}", 1)


def open_broker(home: Path):  # -> Broker
    from capgate.broker.service import Broker

    return Broker.open(Home(home))


@click.command("proxy")
@caps_option
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT.")
@upstream_ca_option
@click.option(
    "--body-limit",
    default="10m",
    show_default=True,
    help="Largest request body buffered for body transforms (413 above).",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option(
    "--record",
    "record_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write every request handled as a replay fixture into DIR (values as placeholders).",
)
@click.option(
    "--metrics-listen",
    default=None,
    help="HOST:PORT to serve Prometheus /metrics on (e.g. 127.0.0.1:9464); off by default.",
)
@click.option(
    "--audit-fail-closed",
    is_flag=True,
    help="Refuse requests (503) while policy decisions cannot be written to the store.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (never values).")
@click.pass_context
def proxy_command(
    ctx,
    caps_path,
    listen,
    upstream_cas,
    body_limit,
    access_log,
    record_dir,
    metrics_listen,
    audit_fail_closed,
    verbose,
) -> None:
    """Run the proxy: agents authenticate with their workspace token."""
    from ..addon.runner import ProxySettings, ca_cert_path, configure_logging, serve
    from ..replay.record import record_addons

    configure_logging(verbose=verbose, access_log=access_log)
    check_caps(caps_path)
    host, port = _parse_listen(listen)
    check_port_free(host, port)
    metrics_addr = _parse_listen(metrics_listen, "--metrics-listen") if metrics_listen else None
    if host not in LOOPBACK:
        logger.warning(
            "listening on %s: reachable beyond this machine (tokens still required)", host
        )
    settings = ProxySettings(
        home=ctx.obj.home,
        caps_path=caps_path,
        listen_host=host,
        listen_port=port,
        upstream_cas=tuple(upstream_cas),
        body_limit=body_limit,
        audit_fail_closed=audit_fail_closed,
        extra_addons=tuple(record_addons(record_dir)) if record_dir else (),
    )
    try:
        broker = open_broker(ctx.obj.home)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    logger.info("CA certificate for agents: %s", ca_cert_path(ctx.obj.home))
    if metrics_addr is not None:
        _serve_metrics(*metrics_addr)
    try:
        asyncio.run(serve(settings, broker))
    except (RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc), 1)


def _serve_metrics(host: str, port: int) -> None:
    from capgate.broker.metrics import serve_metrics

    if host not in LOOPBACK:
        logger.warning("metrics on %s: reachable beyond this machine, without auth", host)
    try:
        server, _thread = serve_metrics(host, port)
    except OSError as exc:
        _fail(f"cannot listen for metrics on {host}:{port}: {exc.strerror}", 1)
    bound_host, bound_port = server.server_address[:2]  # type: ignore[attr-defined]
    logger.info("metrics on http://%s:%d/metrics", bound_host, bound_port)


@click.command("ca")
@click.option(
    "--bundle",
    is_flag=True,
    help="Print the path of the public roots (certifi) plus capgate's CA instead.",
)
@click.pass_context
def ca_command(ctx, bundle) -> None:
    """Print the path of the proxy CA certificate (PEM) agents trust; create it if needed.

    With --bundle: a bundle of the public roots plus capgate's CA, for runtimes that take
    one file for all of their trust (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, ...).
    """
    from ..addon.runner import ca_cert_path, client_trust_bundle

    home = ctx.obj.home
    click.echo(str(client_trust_bundle(home) if bundle else ca_cert_path(home)))


def register(main: click.Group) -> None:
    for command in (proxy_command, ca_command):
        main.add_command(command)
