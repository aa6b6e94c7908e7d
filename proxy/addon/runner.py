"""Running mitmproxy with capgate's addon: CA, trust bundles, logging, lifecycle.

Only the mitmproxy addons the forward proxy needs are loaded (core, proxy server, next
layer, TLS, h2c refusal) plus capgate's own; no flow is kept after it completes. Two ways
to run: `serve()` in the current process until SIGINT/SIGTERM (`capgate proxy`), and
`ProxyThread` on an ephemeral port in a background thread (`capgate exec`, tests).

Shutdown (SIGTERM/SIGINT, `serve()`): the listening sockets close at once, requests in
flight get up to SHUTDOWN_GRACE_S seconds (CAPGATE_SHUTDOWN_GRACE) to finish and write
their rows; a request still open after the grace period is recorded with reason
`shutdown` (it may have reached the upstream), then the proxy stops and every queued row
is written. A second signal stops at once (the rows of open requests are still written).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import resource
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import certs, hooks, master, options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig
from mitmproxy.proxy import mode_servers

from .broker_port import BrokerPort
from .connections import ConnectionGuard
from .deadlines import UpstreamDeadlines
from .flowstate import finish, get_state
from .hooks import CapgateAddon
from .limits import install_limits
from .responses import install_error_pages
from .upstream import UpstreamIdentity

logger = logging.getLogger("capgate.proxy")

SHUTDOWN_GRACE_S = 10.0  # default; CAPGATE_SHUTDOWN_GRACE overrides (seconds, >= 0)
GRACE_ENV = "CAPGATE_SHUTDOWN_GRACE"

CA_BASENAME = "mitmproxy"  # mitmproxy's file names inside the confdir
LISTEN_TIMEOUT_S = 15.0
# Libraries whose DEBUG records are costly or can carry values (cel-python logs the
# activation, secrets included). mitmproxy's own entry point sets the root to DEBUG.
CHATTY_LOGGERS = (
    "celpy",
    "lark",
    "hpack",
    "h2",
    "hyperframe",
    "asyncio",
    "tornado",
    "urwid",
    "quic",
    "aioquic",
    "passlib",
    "httpx",
    "httpcore",
    "mitmproxy",
    "sqlite_utils",
    "authlib",
)


def ca_cert_path(home: Path) -> Path:
    """The PEM certificate agents trust, created (with its key) on first use."""
    confdir = home / "ca"
    confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    certs.CertStore.from_store(confdir, CA_BASENAME, 2048)
    return confdir / f"{CA_BASENAME}-ca-cert.pem"


def _bundle(target: Path, parts: Sequence[Path]) -> Path:
    text = "".join(p.read_text().rstrip("\n") + "\n" for p in parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: `--workers N` start N processes writing it at once.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def client_trust_bundle(home: Path) -> Path:
    """The public roots plus capgate's CA: what an agent's runtimes should trust."""
    return _bundle(home / "ca" / "agent-trust.pem", [Path(certifi.where()), ca_cert_path(home)])


def upstream_trust_bundle(home: Path, extra_cas: Sequence[Path]) -> Path | None:
    """Roots for upstream TLS: the public ones plus each `--upstream-ca` (None: defaults)."""
    if not extra_cas:
        return None
    for pem in extra_cas:
        if "-----BEGIN CERTIFICATE-----" not in pem.read_text():
            raise ValueError(f"{pem}: not a PEM certificate file")
    return _bundle(home / "ca" / "upstream-trust.pem", [Path(certifi.where()), *extra_cas])


def quiet_libraries() -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(
    verbose: bool = False, access_log: bool = True, worker: int | None = None
) -> None:
    """capgate owns logging: one stderr handler; libraries at WARNING; no root DEBUG.

    A worker of `--workers N` tags its lines `[worker I pid P]`, so the shared stderr
    says which process handled what.
    """
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    quiet_libraries()
    # The formats below name no thread, process, task or source line: the logging HOWTO's
    # "Optimization" knobs spare each line (one per request in the access log) finding them.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # 3.12; typeshed lags
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    tag = "" if worker is None else f"[worker {worker} pid {os.getpid()}]"
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    capgate = logging.getLogger("capgate")
    capgate.handlers[:] = [handler]
    capgate.propagate = False
    capgate.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("capgate.access").setLevel(logging.INFO if access_log else logging.WARNING)


# --- the SO_REUSEPORT seam ------------------------------------------------------------
#
# `capgate proxy --workers N` runs N processes that each listen on the same port; the
# kernel spreads new connections over them. mitmproxy opens its own listening socket
# (`AsyncioServerInstance.listen` calls `asyncio.start_server(handler, host, port)`, with
# no way to pass options or a socket), so the one seam is to replace `listen` on the
# regular-mode server class with a version that passes `reuse_port=True`, and only for
# the Proxyserver addons registered below (`build_master(..., reuse_port=True)`); every
# other master in the process (tests, `capgate exec`) keeps mitmproxy's own `listen`.
# The kernel only lets sockets of the same effective user join a SO_REUSEPORT group, so
# another local user cannot bind the port to steal connections.
_REUSE_PORT_SERVERS: weakref.WeakSet[Any] = weakref.WeakSet()
_stock_listen = mode_servers.RegularInstance.listen


async def _listen(self: Any, host: str, port: int) -> list[Any]:
    if self.manager in _REUSE_PORT_SERVERS and self.mode.transport_protocol == "tcp":
        if not port:
            raise OSError("a SO_REUSEPORT listener needs a concrete port")
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]
    return await _stock_listen(self, host, port)


mode_servers.RegularInstance.listen = _listen  # type: ignore[method-assign]


@dataclass(frozen=True)
class ProxySettings:
    home: Path
    caps_path: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstream_cas: tuple[Path, ...] = ()
    body_limit: str = "10m"
    reuse_port: bool = False  # join a SO_REUSEPORT group on listen_port (a worker)
    audit_fail_closed: bool = False
    extra_addons: tuple[Any, ...] = field(default=(), compare=False)


def mitmproxy_addons(reuse_port: bool = False, before_tls: Sequence[Any] = ()) -> list[Any]:
    """The stock mitmproxy addons capgate runs on (the bench's "bare" baseline uses the
    same): core, proxy server, next layer, TLS, and h2c refusal; nothing else.
    `before_tls`: capgate's own addons that must run between next layer and TLS.
    The last one (h2c refusal, a `request` hook only) goes first into `CapgateAddons`,
    so that it costs no chain entry of its own."""
    server = proxyserver.Proxyserver()
    if reuse_port:
        _REUSE_PORT_SERVERS.add(server)
    return [
        core.Core(),
        server,
        next_layer.NextLayer(),
        *before_tls,
        tlsconfig.TlsConfig(),
        disable_h2c.DisableH2C(),
    ]


def mitmproxy_options(settings: ProxySettings) -> dict[str, Any]:
    """mitmproxy's own options as capgate sets them (without capgate's addon options)."""
    trusted = upstream_trust_bundle(settings.home, settings.upstream_cas)
    return dict(
        mode=["regular"],
        listen_host=settings.listen_host,
        listen_port=settings.listen_port,
        confdir=str(settings.home / "ca"),
        ssl_insecure=False,
        ssl_verify_upstream_trusted_ca=str(trusted) if trusted else None,
        # mitmproxy's body_size_limit also kills large streamed bodies with a known length;
        # capgate bounds the bodies it buffers itself (capgate_body_limit -> 413).
        body_size_limit=None,
        stream_large_bodies=None,
        connection_strategy="lazy",
    )


async def build_master(
    settings: ProxySettings, broker: BrokerPort, first_addons: Sequence[Any] = ()
) -> master.Master:
    """A mitmproxy Master in regular mode with capgate's addon; call inside the loop."""
    quiet_libraries()
    install_error_pages()
    install_limits()
    ca_cert_path(settings.home)
    m = master.Master(options.Options(), with_termlog=False)
    # UpstreamIdentity before tlsconfig and any address-rewriting addon
    *stock, h2c = mitmproxy_addons(settings.reuse_port, before_tls=(UpstreamIdentity(),))
    own = CapgateAddons(
        h2c, *first_addons, CapgateAddon(broker), UpstreamDeadlines(), ConnectionGuard()
    )
    m.addons.add(*stock, *settings.extra_addons, own)
    own.register_children(m.addons)
    m.options.update(
        **mitmproxy_options(settings),
        capgate_caps=str(settings.caps_path),
        capgate_body_limit=settings.body_limit,
        capgate_audit_fail_closed=settings.audit_fail_closed,
    )
    return m


class CapgateAddons:
    """capgate's request-path addons as one entry of mitmproxy's addon chain.

    mitmproxy dispatches every event to every chain entry through a context manager, a
    coroutine and two generators, whether or not the entry has a hook for it, and once
    more for each child an entry lists in `addons` (about 2 µs per entry per event; a
    request is eight events). This entry has no `addons`: for each hook one of its
    children has, it holds one callable that runs the children's hooks in their order
    (awaiting the async ones), so a request costs one dispatch here, not four.
    `register_children` puts the children in mitmproxy's addon registry under their own
    names (`master.addons.get("capgate")`).

    As with mitmproxy's own nested addons, an exception in one child's hook skips the
    later children for that event; capgate's hooks fail closed and never raise.
    """

    name = "capgate-addons"

    def __init__(self, *addons: Any) -> None:
        self.children = addons
        for hook in sorted({n for a in addons for n in dir(a) if n in hooks.all_hooks}):
            funcs = [getattr(a, hook) for a in addons if callable(getattr(a, hook, None))]
            setattr(self, hook, funcs[0] if len(funcs) == 1 else _in_order(funcs))

    def register_children(self, manager: Any) -> None:
        for child in self.children:
            name = getattr(child, "name", type(child).__name__.lower())  # as mitmproxy names
            if name in manager.lookup:
                raise ValueError(f"an addon called {name!r} already exists")
            manager.lookup[name] = child


def _in_order(funcs: list[Callable[..., Any]]) -> Callable[..., Any]:
    if not any(inspect.iscoroutinefunction(f) for f in funcs):

        def run(*args: Any) -> None:
            for func in funcs:
                func(*args)

        return run

    async def run_async(*args: Any) -> None:
        for func in funcs:
            result = func(*args)
            if inspect.isawaitable(result):
                await result

    return run_async


class InFlight:
    """Which requests capgate is handling: registered before capgate's addon, so a request
    is known from its first hook on; it is done once capgate recorded its row (its
    FlowState is gone). Flows are held weakly: mitmproxy holds every open one, and a
    finished flow (with its bodies) must not stay in memory until shutdown."""

    name = "capgate-inflight"

    def __init__(self) -> None:
        self.flows: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def requestheaders(self, flow: Any) -> None:
        self.flows[id(flow)] = flow

    def open_flows(self) -> list[Any]:
        for key, flow in list(self.flows.items()):
            if get_state(flow) is None:
                del self.flows[key]
        return list(self.flows.values())


def shutdown_grace() -> float:
    raw = os.environ.get(GRACE_ENV)
    if raw is None:
        return SHUTDOWN_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ValueError(f"{GRACE_ENV} must be a number of seconds from 0 to 3600")
    return value


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the descriptor limit from %d: %s", soft, exc)
    return soft, hard


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Connections cancelled while the loop stops are no error (CPython 3.12.1 logs one
    traceback per open connection from asyncio.streams)."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def drain(
    m: master.Master,
    inflight: InFlight,
    broker: BrokerPort,
    grace: float,
    forced: asyncio.Event,
) -> None:
    """Stop listening, let open requests finish for up to `grace` s, record the rest."""
    open_flows = inflight.open_flows()
    logger.info(
        "shutting down: %d request(s) in flight, waiting up to %.0f s", len(open_flows), grace
    )
    m.options.update(server=False)  # close the listening sockets; connections stay
    ends = time.monotonic() + grace
    while open_flows and time.monotonic() < ends and not forced.is_set():
        await asyncio.sleep(0.05)
        open_flows = inflight.open_flows()
    for flow in open_flows:
        state = get_state(flow)
        if state is not None:
            state.reason = state.reason or "shutdown"
            finish(broker, flow, state, None)
    if open_flows:
        logger.warning(
            "shutdown: %d request(s) still open after %.0f s, recorded as `shutdown`",
            len(open_flows),
            grace,
        )


async def serve(
    settings: ProxySettings, broker: BrokerPort, on_listening: Callable[[], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM; drain requests in flight, then flush policy decisions.

    `on_listening` is called once the socket listens (a worker tells its supervisor).
    """
    grace = shutdown_grace()
    soft, hard = raise_fd_limit()
    logger.debug("descriptor limit %d (hard %d)", soft, hard)
    inflight = InFlight()
    m = await build_master(settings, broker, first_addons=(inflight,))
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancelled)
    stopping: list[asyncio.Task[None]] = []
    forced = asyncio.Event()

    def on_signal() -> None:
        if stopping:  # a second signal: stop now
            forced.set()
            m.shutdown()
            return
        task = loop.create_task(drain(m, inflight, broker, grace, forced))
        task.add_done_callback(lambda _: m.shutdown())
        stopping.append(task)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    run = loop.create_task(m.run())
    try:
        ps = m.addons.get("proxyserver")
        deadline = loop.time() + LISTEN_TIMEOUT_S
        while not ps.listen_addrs() and not run.done():
            if loop.time() > deadline:  # mitmproxy logs a bind failure and keeps running
                m.shutdown()
                await run
                raise RuntimeError(
                    f"could not listen on {settings.listen_host}:{settings.listen_port}"
                )
            await asyncio.sleep(0.01)
        if ps.listen_addrs():
            host, port, *_ = ps.listen_addrs()[0]
            if on_listening is None:
                logger.info("listening on %s:%d", host, port)
            else:  # a worker: its supervisor announces the port once all listen
                on_listening()
        await run
    finally:
        for flow in inflight.open_flows():  # forced stop: the rows are still written
            state = get_state(flow)
            if state is not None:
                state.reason = state.reason or "shutdown"
                finish(broker, flow, state, None)
        broker.close()
    if not stopping and not m.should_exit.is_set():
        raise RuntimeError("the proxy could not listen")


class ProxyThread:
    """The proxy in a background thread with its own event loop (exec, tests)."""

    def __init__(self, settings: ProxySettings, broker: BrokerPort) -> None:
        self.settings = settings
        self.broker = broker
        self.host = settings.listen_host
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: master.Master | None = None
        self._thread = threading.Thread(target=self._main, name="capgate-proxy", daemon=True)

    @property
    def addon(self) -> CapgateAddon:
        assert self._master is not None
        found = self._master.addons.get("capgate")
        assert isinstance(found, CapgateAddon)
        return found

    def start(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(timeout=15)
        if self._error is not None:
            raise RuntimeError(f"the proxy failed to start: {self._error}") from self._error
        if not self.port:
            raise RuntimeError("the proxy did not start in time")
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced to start() / stop()
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._master = await build_master(self.settings, self.broker)
        run = self._loop.create_task(self._master.run())
        ps = self._master.addons.get("proxyserver")
        while not ps.listen_addrs():
            if run.done():
                run.result()
                raise RuntimeError("the proxy could not listen")
            await asyncio.sleep(0.005)
        self.host, self.port, *_ = ps.listen_addrs()[0]
        self._ready.set()
        await run

    def stop(self) -> None:
        if self._master is not None and self._loop is not None and self._thread.is_alive():
            self._master.shutdown()
        self._thread.join(timeout=10)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
