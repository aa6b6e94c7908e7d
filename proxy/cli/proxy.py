"""Proxy commands: `capgate proxy`, `capgate ca` (`exec` and `env` live in agent.py,
`decisions` in decisions.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from capgate.broker.errors import CapgateError
from capgate.broker.home import Home

from .workers import Supervisor, reserve_port

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
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Proxy processes sharing the listening port (SO_REUSEPORT) and the home.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (never values).")
# Set by the supervisor of `--workers N` on the processes it starts; not for users.
@click.option("--worker-index", type=int, default=None, hidden=True)
@click.option("--ready-fd", type=int, default=None, hidden=True)
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
    workers,
    verbose,
    worker_index,
    ready_fd,
) -> None:
    """Run the proxy: agents authenticate with their workspace token."""
    from ..addon.runner import ProxySettings, ca_cert_path, configure_logging, serve
    from ..replay.record import record_addons

    configure_logging(verbose=verbose, access_log=access_log, worker=worker_index)
    check_caps(caps_path)
    host, port = _parse_listen(listen)
    if worker_index is None:
        # Also for --workers: no socket at all may be bound there, or a second supervisor
        # of the same user would join the first one's SO_REUSEPORT group.
        check_port_free(host, port)
    metrics_addr = _parse_listen(metrics_listen, "--metrics-listen") if metrics_listen else None
    if metrics_addr is not None and workers > 1:
        raise click.UsageError("--metrics-listen cannot be combined with --workers yet")
    if host not in LOOPBACK and worker_index is None:
        logger.warning(
            "listening on %s: reachable beyond this machine (tokens still required)", host
        )
    if workers > 1 and worker_index is None:
        _supervise(ctx, workers, host, port)
        return
    settings = ProxySettings(
        home=ctx.obj.home,
        caps_path=caps_path,
        listen_host=host,
        listen_port=port,
        upstream_cas=tuple(upstream_cas),
        body_limit=body_limit,
        reuse_port=worker_index is not None,
        audit_fail_closed=audit_fail_closed,
        extra_addons=tuple(record_addons(record_dir)) if record_dir else (),
    )
    try:
        broker = open_broker(ctx.obj.home)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    if worker_index is None:
        logger.info("CA certificate for agents: %s", ca_cert_path(ctx.obj.home))
    if metrics_addr is not None:
        _serve_metrics(*metrics_addr)
    try:
        asyncio.run(serve(settings, broker, _ready_signal(ready_fd)))
    except (RuntimeError, OSError, ValueError) as exc:
        _fail(str(exc), 1)


def _ready_signal(ready_fd: int | None) -> Callable[[], None] | None:
    """A worker tells its supervisor that it listens by writing one byte to `ready_fd`."""
    if ready_fd is None:
        return None

    def signal_ready() -> None:
        try:
            os.write(ready_fd, b"R")
        finally:
            os.close(ready_fd)

    return signal_ready


def _supervise(ctx: click.Context, count: int, host: str, port: int) -> None:
    """`--workers N`: reserve the port, run N copies of this command as workers."""
    from capgate.broker.stores import Stores

    try:
        Stores.open(Home(ctx.obj.home)).close()  # migrate once, and fail here, not N times
        reserved = reserve_port(host, port)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1)
    port = reserved.getsockname()[1]
    # The worker's argv: this invocation's own options, minus --listen/--workers.
    params = {k: v for k, v in ctx.params.items() if k not in ("listen", "workers")}
    base = [sys.executable, "-m", "capgate.proxy", "--home", str(ctx.obj.home)]
    base += ["--org", ctx.obj.org, "proxy", "--caps", str(params["caps_path"])]
    for ca in params["upstream_cas"]:
        base += ["--upstream-ca", str(ca)]
    base += ["--body-limit", params["body_limit"], "--listen", f"{host}:{port}"]
    base.append("--access-log" if params["access_log"] else "--no-access-log")
    if params["record_dir"] is not None:
        base += ["--record", str(params["record_dir"])]
    if params["verbose"]:
        base.append("-v")
    if params["audit_fail_closed"]:
        base.append("--audit-fail-closed")
    from ..addon.runner import ca_cert_path

    logger.info("CA certificate for agents: %s", ca_cert_path(ctx.obj.home))
    supervisor = Supervisor(
        count, lambda index, fd: [*base, "--worker-index", str(index), "--ready-fd", str(fd)]
    )

    def announce() -> None:
        logger.info("listening on %s:%d", host, port)

    try:
        code = supervisor.run(announce)
    finally:
        reserved.close()
    if code:
        _fail("the workers could not start", code)


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
