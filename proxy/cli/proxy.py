"""Proxy commands: `capgate proxy`, `capgate ca`, `capgate exec`, `capgate decisions`.

`exec` runs CMD with the proxy and CA-trust variables that common runtimes read. NO_PROXY
is set to `--no-proxy` (empty by default, replacing any inherited value): capgate can only
stamp credentials on requests that go through it, local services included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click

from capgate.broker.decisions import StoredDecision, list_decisions
from capgate.broker.errors import CapgateError
from capgate.broker.home import Home
from capgate.broker.provision import check_role, provision_workspace
from capgate.broker.store import ABSENT_ORG
from capgate.broker.stores import Stores
from capgate.caps import CapsConfig, CapsError

from ..addon.reload import preload
from ..addon.runner import (
    ProxySettings,
    ProxyThread,
    ca_cert_path,
    client_trust_bundle,
    configure_logging,
    serve,
)
from ..replay.record import record_addons
from .workers import Supervisor, reserve_port

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


def _check_caps(path: Path) -> CapsConfig:
    try:
        return preload(path)
    except CapsError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _fail(f"{path} is not a valid caps file", 1)
        raise  # unreachable: _fail raises


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8080", param_hint="--listen")
    return host.strip("[]") or "127.0.0.1", int(port)


def _open_broker(home: Path):  # -> Broker
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
    workers,
    verbose,
    worker_index,
    ready_fd,
) -> None:
    """Run the proxy: agents authenticate with their workspace token."""
    configure_logging(verbose=verbose, access_log=access_log, worker=worker_index)
    _check_caps(caps_path)
    host, port = _parse_listen(listen)
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
        extra_addons=tuple(record_addons(record_dir)) if record_dir else (),
    )
    try:
        broker = _open_broker(ctx.obj.home)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    if worker_index is None:
        logger.info("CA certificate for agents: %s", ca_cert_path(ctx.obj.home))
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


@click.command("ca")
@click.pass_context
def ca_command(ctx) -> None:
    """Print the path of the proxy CA certificate (PEM) agents trust; create it if needed."""
    click.echo(str(ca_cert_path(ctx.obj.home)))


def agent_environment(
    base: dict[str, str], proxy_url: str, bundle: Path, ca_cert: Path, no_proxy: str
) -> dict[str, str]:
    """CMD's environment: proxy variables, NO_PROXY, and every common CA-trust variable.

    capgate's own settings (CAPGATE_HOME, CAPGATE_ORG, CAPGATE_UNSAFE_*, ...) are not
    passed on: the agent has no business knowing where the home is or how minting is
    configured.
    """
    env = {name: value for name, value in base.items() if not name.startswith("CAPGATE_")}
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        env[name] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    for name in (
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
    ):
        env[name] = str(bundle)
    env["NODE_EXTRA_CA_CERTS"] = str(ca_cert)  # added to Node's own roots
    env["NODE_USE_ENV_PROXY"] = "1"  # Node's built-in fetch honours HTTP(S)_PROXY
    return env


@click.command("exec", context_settings={"ignore_unknown_options": True})
@caps_option
@click.option("--role", required=True)
@click.option("--user", "user_name", required=True)
@upstream_ca_option
@click.option("--no-proxy", default="", help="NO_PROXY for CMD (default: empty).")
@click.option("-v", "--verbose", is_flag=True, help="Access log and debug logging on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_command(ctx, caps_path, role, user_name, upstream_cas, no_proxy, verbose, command):
    """Run CMD through a short-lived workspace and proxy; exit with CMD's exit code."""
    configure_logging(verbose=verbose, access_log=verbose)
    if not verbose:
        logging.getLogger("capgate").setLevel(logging.WARNING)
    config = _check_caps(caps_path)
    home: Path = ctx.obj.home
    try:
        check_role(role, config.roles)  # before anything is written for a call that will fail
        stores = Stores.open(Home(home))
        made = provision_workspace(
            stores, ctx.obj.org, role, user_name, add_user=True, actor="capgate-exec"
        )
        if made.added_user:
            click.echo(f"capgate: added user {user_name!r}", err=True)
        workspace, token = made.workspace, made.token
        org_id = workspace.org_id
        broker = _open_broker(home)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    settings = ProxySettings(
        home=home, caps_path=caps_path, listen_port=0, upstream_cas=tuple(upstream_cas)
    )
    proxy = ProxyThread(settings, broker)
    try:
        proxy.start()
        env = agent_environment(
            dict(os.environ),
            f"http://agent:{token}@127.0.0.1:{proxy.port}",
            client_trust_bundle(home),
            ca_cert_path(home),
            no_proxy,
        )
        code = _run_child(list(command), env)
    finally:
        try:
            stores.workspaces.revoke(org_id, workspace.id, actor="capgate-exec")
        finally:
            proxy.stop()
            broker.close()
            stores.close()
    raise click.exceptions.Exit(code)


def _run_child(command: list[str], env: dict[str, str]) -> int:
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        _fail(f"cannot run {command[0]}: {exc.strerror}", 127)
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # the terminal sent SIGINT to both; wait for CMD
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 - code if code < 0 else code


def _row_line(stored: StoredDecision) -> str:
    d = stored.decision
    at = datetime.fromtimestamp(d.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    outcome = d.decision + (f"/{d.reason}" if d.reason else "")
    status = str(d.upstream_status) if d.upstream_status is not None else "-"
    duration = f"{d.duration_ms:.0f}ms" if d.duration_ms is not None else "-"
    extra = []
    if d.transforms_failed:
        extra.append("failed=" + ",".join(f"{k}:{v}" for k, v in d.transforms_failed.items()))
    if d.auth_failures:
        extra.append("auth=" + ",".join(f"{k}:{v}" for k, v in d.auth_failures.items()))
    return "  ".join(
        [
            at,
            f"{outcome:<24}",
            f"{d.method:<7}",
            f"{d.host}:{d.port}{d.path}",
            status,
            duration,
            d.capability or "-",
            d.workspace_id or "-",
            *extra,
        ]
    )


@click.command("decisions")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--follow", is_flag=True, help="Keep printing new decisions.")
@click.option("--workspace", "workspace_id", default=None)
@click.option("--limit", default=50, show_default=True, help="How many recent rows.")
@click.option("--all-orgs", is_flag=True, help="Every org, and requests without a token.")
@click.pass_context
def decisions_command(ctx, as_json, follow, workspace_id, limit, all_orgs) -> None:
    """Recent policy decisions (one per request), oldest first."""
    try:
        stores = Stores.open(Home(ctx.obj.home))
        # A read: an org never created has no rows (and is not created here).
        org_id = None if all_orgs else (stores.control.find_org_id(ctx.obj.org) or ABSENT_ORG)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    ctx.call_on_close(stores.close)
    rows = list_decisions(stores.control, org_id, workspace_id=workspace_id, limit=limit)
    last = rows[-1].id if rows else 0
    _print_rows(rows, as_json)
    while follow:
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            return
        rows = list_decisions(stores.control, org_id, workspace_id=workspace_id, since_id=last)
        if rows:
            last = rows[-1].id
            _print_rows(rows, as_json)


def _print_rows(rows: list[StoredDecision], as_json: bool) -> None:
    for row in rows:
        click.echo(json.dumps(row.to_json(), sort_keys=True) if as_json else _row_line(row))
    sys.stdout.flush()


def register(main: click.Group) -> None:
    for command in (proxy_command, ca_command, exec_command, decisions_command):
        main.add_command(command)
