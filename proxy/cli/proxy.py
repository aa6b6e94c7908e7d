"""Proxy commands: `capgate proxy`, `capgate ca`, `capgate exec`.

`exec` runs CMD with the proxy and CA-trust variables that common runtimes read. NO_PROXY
is set to `--no-proxy` (empty by default, replacing any inherited value): capgate can only
stamp credentials on requests that go through it, local services included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path

import click

from capgate.broker.errors import CapgateError
from capgate.broker.home import Home
from capgate.broker.provision import check_role, provision_workspace
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


def _parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT, e.g. 127.0.0.1:8080", param_hint=flag)
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
    configure_logging(verbose=verbose, access_log=access_log)
    _check_caps(caps_path)
    host, port = _parse_listen(listen)
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
        broker = _open_broker(ctx.obj.home)
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


def register(main: click.Group) -> None:
    for command in (proxy_command, ca_command, exec_command):
        main.add_command(command)
