"""Agent commands: `capgate exec` (run CMD contained, through a short-lived workspace and
proxy) and `capgate env` (wire a shell to a long-running proxy).

`exec` runs CMD with the proxy and CA-trust variables that common runtimes read. NO_PROXY
is set to `--no-proxy` (empty by default, replacing any inherited value): capgate can only
stamp credentials on requests that go through it, local services included.

On Linux CMD runs contained (see `capgate.proxy.contain.sandbox`): it cannot see the home
and its only way out is the proxy. The workspace holds a short lease that exec renews
while CMD runs: exec killed with SIGKILL leaves a token that dies within LEASE_S.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from capgate.broker.errors import CapgateError, Conflict
from capgate.broker.home import Home
from capgate.broker.provision import Provisioned, check_role, provision_workspace
from capgate.broker.stores import Stores

from ..contain import sandbox
from .durations import ttl_option
from .support import caps_roles

logger = logging.getLogger("capgate.proxy")

# exec's lease: renewed every RENEW_S while CMD runs. CAPGATE_EXEC_LEASE_S shortens it
# (tests); it is never passed to CMD (no CAPGATE_* variable is).
LEASE_S = 30
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
    "HTTPLIB2_CA_CERTS",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def proxy_variables(proxy_url: str, bundle: str, ca_cert: str, no_proxy: str) -> dict[str, str]:
    """What wires a process to capgate: proxy variables (both cases), NO_PROXY, CA trust."""
    env = dict.fromkeys(PROXY_VARIABLES, proxy_url)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env.update(dict.fromkeys(CA_VARIABLES, bundle))
    env["NODE_EXTRA_CA_CERTS"] = ca_cert  # added to Node's own roots
    env["NODE_USE_ENV_PROXY"] = "1"  # Node >= 24's built-in fetch and https honour the above
    return env


def agent_environment(
    base: Mapping[str, str], proxy_url: str, bundle: Path | str, ca_cert: Path | str, no_proxy: str
) -> dict[str, str]:
    """CMD's environment: `base` without capgate's own settings, plus `proxy_variables`.

    capgate's settings (CAPGATE_HOME, CAPGATE_ORG, CAPGATE_UNSAFE_*, ...) are not passed
    on: the agent has no business knowing where the home is or how minting is configured.
    """
    env = {name: value for name, value in base.items() if not name.startswith("CAPGATE_")}
    env.update(proxy_variables(proxy_url, str(bundle), str(ca_cert), no_proxy))
    return env


def write_wgetrc(path: Path, bundle: Path | str) -> Path:
    """A wgetrc trusting `bundle`: GNU wget (GnuTLS builds) reads no CA variable.

    Set as WGETRC only when the caller has none of their own.
    """
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# written by capgate: trust the public roots plus capgate's CA\n"
        + f"ca_certificate = {bundle}\n"
    )
    tmp.replace(path)
    return path


def _lease_seconds() -> int:
    text = os.environ.get("CAPGATE_EXEC_LEASE_S", "")
    return int(text) if text.isdigit() and int(text) >= 1 else LEASE_S


class LeaseKeeper:
    """Renews the workspace's lease every third of it, on its own store connection."""

    def __init__(self, home: Path, org_id: str, workspace_id: str, lease_s: int) -> None:
        self.home, self.org_id, self.workspace_id, self.lease_s = (
            home,
            org_id,
            workspace_id,
            lease_s,
        )
        self.lost = threading.Event()  # the lease could not be renewed: CMD must stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capgate-lease", daemon=True)

    def start(self, on_lost) -> LeaseKeeper:
        self._on_lost = on_lost
        self._thread.start()
        return self

    def _run(self) -> None:
        stores = Stores.open(Home(self.home))
        try:
            while not self._stop.wait(max(self.lease_s / 3, 0.2)):
                try:
                    stores.workspaces.renew(self.org_id, self.workspace_id, self.lease_s)
                except Conflict as exc:  # expired (exec was suspended too long) or revoked
                    click.echo(f"error: {exc}: stopping the command", err=True)
                    self.lost.set()
                    self._on_lost()
                    return
                except CapgateError as exc:  # busy store: the next turn tries again
                    logger.warning("could not renew the workspace lease: %s", exc)
        finally:
            stores.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)


@dataclass
class Contained:
    """A prepared sandbox: its run folder, relay to the proxy, and the paths CMD sees."""

    box: sandbox.Sandbox
    run_dir: Path
    relay: object
    run_as: pwd.struct_passwd | None

    def close(self) -> None:
        self.relay.close()  # type: ignore[attr-defined]
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _prepare_sandbox(
    home: Path, bundle: Path, ca_cert: Path, port: int, run_as: pwd.struct_passwd | None
) -> Contained:
    from ..contain.forward import UnixToTcp

    bwrap = sandbox.find_bwrap()
    workdir = Path.cwd()
    sandbox.check_workdir(workdir, home)
    run_dir = Path(tempfile.mkdtemp(prefix="capgate-exec-"))
    try:
        copies = (
            (bundle, "ca-bundle.pem"),
            (ca_cert, "capgate-ca.pem"),
            (sandbox.FORWARDER, "forward.py"),
        )
        for source, name in copies:
            shutil.copyfile(source, run_dir / name)
            (run_dir / name).chmod(0o444)
        write_wgetrc(run_dir / "wgetrc", sandbox.INSIDE_BUNDLE).chmod(0o444)
        relay = UnixToTcp(str(run_dir / "proxy.sock"), "127.0.0.1", port).start()
        if run_as is not None:
            for path in (run_dir, run_dir / "proxy.sock"):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    box = sandbox.Sandbox(
        bwrap=bwrap,
        home=home,
        workdir=workdir,
        run_dir=run_dir,
        port=port,
        as_root=run_as is None and os.geteuid() == 0,
    )
    return Contained(box, run_dir, relay, run_as)


def _run_as_user(name: str | None) -> pwd.struct_passwd | None:
    if name is None:
        return None
    if os.geteuid() != 0:
        _fail("--run-as needs capgate exec to run as root", 2)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _fail(f"--run-as: no OS user {name!r}", 2)
        raise  # unreachable


def _user_kwargs(run_as: pwd.struct_passwd | None) -> dict:
    if run_as is None:
        return {}
    return {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}


def _user_env(env: dict[str, str], run_as: pwd.struct_passwd | None) -> dict[str, str]:
    if run_as is not None:
        env.update(HOME=run_as.pw_dir, USER=run_as.pw_name, LOGNAME=run_as.pw_name)
    return env


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.option(
    "--caps",
    "caps_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The caps.yaml file.",
)
@click.option("--role", required=True)
@click.option("--user", "user_name", required=True)
@click.option(
    "--upstream-ca",
    "upstream_cas",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A PEM CA to trust for upstream TLS, besides the public roots (repeatable).",
)
@click.option("--no-proxy", default="", help="NO_PROXY for CMD (default: empty).")
@click.option(
    "--no-contain",
    is_flag=True,
    help="Run CMD without containment: it can then read the home and bypass the proxy.",
)
@click.option("--run-as", "run_as_name", default=None, help="Run CMD as this OS user (root only).")
@click.option("-v", "--verbose", is_flag=True, help="Access log and debug logging on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_command(
    ctx,
    caps_path,
    role,
    user_name,
    upstream_cas,
    no_proxy,
    no_contain,
    run_as_name,
    verbose,
    command,
):
    """Run CMD contained, through a short-lived workspace and proxy; exit with CMD's code."""
    from ..addon.runner import (
        ProxySettings,
        ProxyThread,
        ca_cert_path,
        client_trust_bundle,
        configure_logging,
    )
    from .proxy import check_caps, open_broker

    configure_logging(verbose=verbose, access_log=verbose)
    if not verbose:
        logging.getLogger("capgate").setLevel(logging.WARNING)
    home: Path = ctx.obj.home
    run_as = _run_as_user(run_as_name)
    if no_contain:
        click.echo(
            "warning: --no-contain: CMD runs unconfined; it can read the capgate home and"
            " reach the network around the proxy",
            err=True,
        )
    else:
        try:
            sandbox.find_bwrap()
            sandbox.check_workdir(Path.cwd(), home)
        except sandbox.ContainmentUnavailable as exc:
            _fail(f"{exc}; --no-contain runs CMD without containment", 1)
    config = check_caps(caps_path)
    lease_s = _lease_seconds()
    try:
        check_role(role, config.roles)  # before anything is written for a call that will fail
        stores = Stores.open(Home(home))
        made = provision_workspace(
            stores,
            ctx.obj.org,
            role,
            user_name,
            ttl_s=lease_s,
            add_user=True,
            actor="capgate-exec",
        )
        if made.added_user:
            click.echo(f"capgate: added user {user_name!r}", err=True)
        broker = open_broker(home)
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    settings = ProxySettings(
        home=home, caps_path=caps_path, listen_port=0, upstream_cas=tuple(upstream_cas)
    )
    proxy = ProxyThread(settings, broker)
    lease = LeaseKeeper(home, made.workspace.org_id, made.workspace.id, lease_s)
    contained: Contained | None = None
    try:
        try:
            proxy.start()
        except RuntimeError as exc:
            _fail(str(exc), 1)
        bundle, ca_cert = client_trust_bundle(home), ca_cert_path(home)
        if not no_contain:
            try:
                contained = _prepare_sandbox(home, bundle, ca_cert, proxy.port, run_as)
            except sandbox.ContainmentUnavailable as exc:
                _fail(f"{exc}; --no-contain runs CMD without containment", 1)
            env = agent_environment(
                os.environ,
                f"http://agent:{made.token}@127.0.0.1:{proxy.port}",
                sandbox.INSIDE_BUNDLE,
                sandbox.INSIDE_CA,
                no_proxy,
            )
        else:
            env = agent_environment(
                os.environ,
                f"http://agent:{made.token}@127.0.0.1:{proxy.port}",
                bundle,
                ca_cert,
                no_proxy,
            )
        env = _user_env(env, run_as)
        if contained is not None:
            env.setdefault("WGETRC", f"{sandbox.INSIDE_DIR}/wgetrc")
        else:
            env.setdefault("WGETRC", str(write_wgetrc(bundle.with_name("agent-wgetrc"), bundle)))
        options = sandbox.node_options(env.get("NODE_OPTIONS"), for_other_user=run_as is not None)
        if options:
            env["NODE_OPTIONS"] = options
        code = _run(list(command), env, contained, run_as, lease)
    finally:
        lease.stop()
        try:
            stores.workspaces.revoke(made.workspace.org_id, made.workspace.id, actor="capgate-exec")
        finally:
            if contained is not None:
                contained.close()
            proxy.stop()
            broker.close()
            stores.close()
    raise click.exceptions.Exit(code)


def _run(
    command: list[str],
    env: dict[str, str],
    contained: Contained | None,
    run_as: pwd.struct_passwd | None,
    lease: LeaseKeeper,
) -> int:
    ready_r = ready_w = filter_fd = options_fd = info_r = info_w = None
    argv = command
    fds: tuple[int, ...] = ()
    if contained is not None:
        ready_r, ready_w = os.pipe()
        info_r, info_w = os.pipe()
        filter_fd = sandbox.seccomp_fd()
        options_fd = sandbox.args_fd(contained.box.options(filter_fd, info_w))
        argv = [
            contained.box.bwrap,
            "--args",
            str(options_fd),
            "--",
            *contained.box.command(command, ready_w),
        ]
        fds = tuple(fd for fd in (ready_w, filter_fd, options_fd, info_w) if fd is not None)
    # bwrap dies on a terminal's Ctrl-C and takes the sandbox with it (SIGKILL): start it
    # with SIGINT and SIGQUIT ignored (inherited); the launcher restores them for CMD.
    saved = (
        [(sig, signal.signal(sig, signal.SIG_IGN)) for sig in (signal.SIGINT, signal.SIGQUIT)]
        if contained is not None
        else []
    )
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=fds, **_user_kwargs(run_as))
    except OSError as exc:
        _fail(f"cannot run {argv[0]}: {exc.strerror}", 127)
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)
        for fd in (ready_w, filter_fd, options_fd, info_w):
            if fd is not None:
                os.close(fd)
    inner = _SandboxPid(info_r) if info_r is not None else None

    def terminate() -> None:
        # Contained: SIGTERM to the launcher (pid 1 inside), which passes it to CMD; bwrap
        # itself would die at once and take CMD with it (SIGKILL, no chance to clean up).
        if inner is not None and inner.signal(signal.SIGTERM):
            return
        child.terminate()

    lease.start(on_lost=terminate)
    previous = signal.signal(signal.SIGTERM, lambda *_: terminate())
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # the terminal sent SIGINT to both; wait for CMD
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ready_r is not None:
        started = os.read(ready_r, 1) == b"R"
        os.close(ready_r)
        if not started:
            _fail(
                "containment could not be set up (bubblewrap's message is above; user"
                " namespaces may be disabled on this kernel); --no-contain runs CMD"
                " without containment",
                1,
            )
    if lease.lost.is_set():
        return 1
    return 128 - code if code < 0 else code


class _SandboxPid:
    """The host pid of the sandbox's pid 1, read from bwrap's --info-fd in the background."""

    def __init__(self, fd: int) -> None:
        self.pid: int | None = None
        self._fd = fd
        threading.Thread(target=self._read, name="capgate-bwrap-info", daemon=True).start()

    def _read(self) -> None:
        data = b""
        try:
            while chunk := os.read(self._fd, 4096):
                data += chunk
        finally:
            os.close(self._fd)
        try:
            found = json.loads(data.decode() or "{}").get("child-pid")
        except ValueError:
            return
        self.pid = found if isinstance(found, int) and found > 1 else None

    def signal(self, number: int) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            return False
        return True


# --- capgate env ------------------------------------------------------------------------


def _shell_lines(variables: Mapping[str, str], shell: str) -> str:
    if shell == "json":
        return json.dumps(dict(variables), sort_keys=True)
    if shell == "fish":
        return "\n".join(f"set -gx {k} {_fish_quote(v)};" for k, v in variables.items())
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in variables.items())


def _fish_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@click.command("env")
@click.option("--role", required=True)
@click.option("--user", "user_name", required=True)
@ttl_option
@click.option(
    "--proxy",
    "proxy_url",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The running proxy (`capgate proxy --listen`).",
)
@click.option(
    "--caps",
    "caps_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Refuse a role this caps.yaml does not define.",
)
@click.option("--no-proxy", default="", help="NO_PROXY (default: empty).")
@click.option(
    "--shell",
    type=click.Choice(["sh", "fish", "json"]),
    default="sh",
    show_default=True,
    help="sh: export lines (bash, zsh, dash); fish: set -gx; json: one flat object.",
)
@click.pass_context
def env_command(ctx, role, user_name, ttl_s, proxy_url, caps_path, no_proxy, shell) -> None:
    """Create a workspace and print the lines that wire a shell to a running proxy.

    \b
    eval "$(capgate env --role R --user U --ttl 8h)"
    """
    from ..addon.runner import ca_cert_path, client_trust_bundle

    scheme, sep, rest = proxy_url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "@" in rest:
        _fail("--proxy must be http://HOST:PORT (without credentials)", 2)
    known_roles = caps_roles(caps_path) if caps_path is not None else None
    try:
        stores = Stores.open(Home(ctx.obj.home))
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    ctx.call_on_close(stores.close)
    try:
        made: Provisioned = provision_workspace(
            stores,
            ctx.obj.org,
            role,
            user_name,
            ttl_s=ttl_s,
            known_roles=known_roles,
            actor="capgate-env",
        )
    except CapgateError as exc:
        _fail(str(exc), exc.exit_code)
    home = ctx.obj.home
    url = f"{scheme}://agent:{made.token}@{rest.rstrip('/')}"
    variables = {
        "CAPGATE_WORKSPACE": made.workspace.id,
        **proxy_variables(url, str(client_trust_bundle(home)), str(ca_cert_path(home)), no_proxy),
    }
    bundle = client_trust_bundle(home)
    if "WGETRC" not in os.environ:
        variables["WGETRC"] = str(write_wgetrc(bundle.with_name("agent-wgetrc"), bundle))
    options = sandbox.node_options(os.environ.get("NODE_OPTIONS"))
    if options:
        variables["NODE_OPTIONS"] = options
    click.echo(_shell_lines(variables, shell))
    lease = f", expires {made.workspace.expires_at}" if made.workspace.expires_at else ""
    click.echo(
        f"capgate: workspace {made.workspace.id} (role {role}, user {user_name}{lease});"
        f" revoke it with: capgate workspace revoke {made.workspace.id}",
        err=True,
    )
    sys.stdout.flush()


def register(main: click.Group) -> None:
    for command in (exec_command, env_command):
        main.add_command(command)
