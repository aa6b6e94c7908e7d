"""The sandbox `capgate exec` runs CMD in: bubblewrap with an explicit list of what CMD sees.

Why bubblewrap (Debian's `bubblewrap`) rather than `unshare` plus our own mounts: a root
inside `unshare -U -r -m` holds CAP_SYS_ADMIN over its own mount namespace and can simply
unmount a tmpfs laid over the home; bwrap builds a new root with pivot_root, drops every
capability, sets no_new_privs, forbids nested user namespaces (`--disable-userns`), kills
the sandbox when exec dies (`--die-with-parent`), takes a seccomp filter, and does so
unprivileged, which `--run-as` needs.

What CMD sees (in this order, later entries over earlier ones):
- the host's root read-only; `/dev` (minimal), a fresh `/proc` of its own pid namespace,
  fresh tmpfs over `/tmp`, `/var/tmp`, `/run`, `/dev/shm` (no host Unix sockets: those
  would be a way out that no network namespace closes);
- its working directory read-write;
- a tmpfs over the capgate home (key file, stores, locks, the CA's key);
- `/run/capgate`: the trust bundle and the Unix socket to the proxy.
Network: a private namespace with loopback only; the launcher inside relays
127.0.0.1:PORT to the proxy. No route, no DNS.
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

INSIDE_DIR = "/run/capgate"
INSIDE_SOCKET = f"{INSIDE_DIR}/proxy.sock"
INSIDE_BUNDLE = f"{INSIDE_DIR}/ca-bundle.pem"
INSIDE_CA = f"{INSIDE_DIR}/capgate-ca.pem"
FORWARDER = Path(__file__).with_name("forward.py")
INSIDE_FORWARDER = f"{INSIDE_DIR}/forward.py"  # a copy: capgate's package may be unreadable
# The launcher needs any Python 3 with its standard library. The system's is readable by
# every user (--run-as); capgate's own interpreter may live in a root-only folder.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
MASKED_SCRATCH = ("/tmp", "/var/tmp", "/run", "/dev/shm")


class ContainmentUnavailable(Exception):
    """Containment cannot be set up here; the message names what is missing."""


def find_bwrap() -> str:
    """The bubblewrap binary, or ContainmentUnavailable naming what is missing."""
    if not sys.platform.startswith("linux"):
        raise ContainmentUnavailable(
            f"containment needs Linux namespaces; this is {platform.system() or sys.platform}"
        )
    found = shutil.which("bwrap")
    if found is None:
        raise ContainmentUnavailable(
            "containment needs bubblewrap (bwrap), which is not installed"
            " (Debian/Ubuntu: apt-get install bubblewrap)"
        )
    return found


@dataclass(frozen=True)
class Sandbox:
    """Everything the bwrap command line is built from."""

    bwrap: str
    home: Path  # the capgate home: masked
    workdir: Path  # CMD's working directory: read-write
    run_dir: Path  # outside: holds the socket and bundle; bound at INSIDE_DIR
    port: int  # 127.0.0.1:PORT inside relays to the proxy
    as_root: bool  # bwrap runs as uid 0 (then capabilities are dropped explicitly)

    def options(self, seccomp_fd: int | None, info_fd: int | None = None) -> list[str]:
        """bwrap's options (for --args: the home's path is among them)."""
        args = [
            "--unshare-user",
            "--disable-userns",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            # The launcher is pid 1: exec signals it (its host pid comes on --info-fd) and
            # it passes SIGTERM on to CMD; bwrap's own init would swallow it.
            "--as-pid-1",
            "--hostname",
            "capgate-agent",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        for scratch in MASKED_SCRATCH:
            if Path(scratch).is_dir() and not Path(scratch).is_symlink():
                args += ["--tmpfs", scratch]
        other_user = not self.as_root and os.geteuid() == 0  # --run-as: bwrap runs as USER
        for runtime in runtime_dirs(other_user):  # what CMD runs with, read-only, also in /tmp
            args += ["--ro-bind", runtime, runtime]
        if str(self.workdir) != "/":
            args += ["--bind", str(self.workdir), str(self.workdir)]
        for masked in _spellings(self.home):
            args += ["--tmpfs", masked, "--remount-ro", masked]
        args += ["--bind", str(self.run_dir), INSIDE_DIR, "--chdir", str(self.workdir)]
        if self.as_root:
            args += ["--cap-drop", "ALL"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        return args

    def command(self, command: list[str], ready_fd: int) -> list[str]:
        """What bwrap runs: the launcher (relay, ready signal), which runs CMD."""
        return [
            launcher_python(),
            "-I",
            "-S",
            INSIDE_FORWARDER,
            str(self.port),
            INSIDE_SOCKET,
            str(ready_fd),
            "--",
            *command,
        ]


NODE_PRELOAD = Path(__file__).with_name("node") / "preload.cjs"
NODE_UNDICI = Path(__file__).with_name("node") / "node_modules" / "undici"


def node_options(existing: str | None, *, for_other_user: bool = False) -> str | None:
    """NODE_OPTIONS with capgate's preload added (Node's fetch through the proxy variables).

    None when the preload or undici is not installed, or (`for_other_user`) when another
    OS user could not read them: a `--require` that cannot be read stops Node at start.
    """
    if not NODE_UNDICI.is_dir() or not NODE_PRELOAD.is_file():
        return existing
    if for_other_user and not all(_world_readable(p) for p in (NODE_PRELOAD, NODE_UNDICI)):
        return existing
    path = str(NODE_PRELOAD)
    require = f'--require "{path}"' if " " in path else f"--require {path}"
    return f"{existing} {require}" if existing else require


def _world_readable(path: Path) -> bool:
    """Whether any user can reach `path`: o+x on every parent, o+r on the path itself."""
    try:
        resolved = path.resolve()
        if not resolved.stat().st_mode & 0o004:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in resolved.parents)
    except OSError:
        return False


def runtime_dirs(other_user: bool = False) -> list[str]:
    """The Python installation and capgate's own files (the launcher, the Node preload),
    when they lie under a folder the sandbox replaces with an empty tmpfs (a venv or a
    checkout in /tmp): bound read-only again, before the home is masked over them."""
    here = Path(__file__).resolve().parent
    candidates = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), here}
    found = []
    for path in sorted(candidates):
        under = any(path.is_relative_to(scratch) for scratch in MASKED_SCRATCH)
        reachable = not other_user or all(
            p.stat().st_mode & 0o001 for p in (path, *path.parents)
        )  # another user must be able to walk down to it, or bwrap cannot bind it
        if under and path.is_dir() and reachable:
            found.append(str(path))
    return found


def launcher_python() -> str:
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def _spellings(path: Path) -> list[str]:
    """The home as given and as resolved (a symlinked home is masked under both names)."""
    seen: list[str] = []
    for candidate in (path.absolute(), path.resolve()):
        text = str(candidate)
        if text not in seen and Path(text).exists():
            seen.append(text)
    return seen


def check_workdir(workdir: Path, home: Path) -> None:
    """Refuse to run CMD from inside the home: it would need the home to be visible."""
    resolved, root = workdir.resolve(), home.resolve()
    if resolved == root or root in resolved.parents:
        raise ContainmentUnavailable(
            f"the working directory {workdir} is inside the capgate home; run from elsewhere"
        )


# --- seccomp: refuse the terminal-injection ioctls --------------------------------------
#
# TIOCSTI pushes bytes into a terminal's input queue: a contained CMD sharing the user's
# terminal could type commands into the shell that started exec, outside the sandbox.
# bwrap's answer is --new-session (setsid), which breaks interactive agents; this filter
# (what Flatpak does) refuses TIOCSTI and TIOCLINUX instead, whatever the kernel's
# dev.tty.legacy_tiocsti says. Only the low 32 bits of the request are compared: the
# kernel truncates it to an unsigned int.

_AUDIT_ARCH = {"x86_64": (0xC000003E, 16), "aarch64": (0xC00000B7, 29)}  # arch, __NR_ioctl
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_X32_SYSCALL_BIT = 0x40000000
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO, _EPERM = 0x7FFF0000, 0x00050000, 1
_SECCOMP_RET_KILL_PROCESS = 0x80000000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter for this machine's architecture (None: unsupported)."""
    found = _AUDIT_ARCH.get(platform.machine())
    if found is None:
        return None
    arch, nr_ioctl = found
    deny = _SECCOMP_RET_ERRNO | _EPERM
    return b"".join(
        [
            _insn(_BPF_LD_W_ABS, 0, 0, 4),  # 0: seccomp_data.arch
            _insn(_BPF_JEQ_K, 0, 8, arch),  # 1: another ABI (i386): kill
            _insn(_BPF_LD_W_ABS, 0, 0, 0),  # 2: seccomp_data.nr
            _insn(_BPF_JGE_K, 6, 0, _X32_SYSCALL_BIT),  # 3: the x32 ABI: kill
            _insn(_BPF_JEQ_K, 0, 4, nr_ioctl),  # 4: not ioctl: allow
            _insn(_BPF_LD_W_ABS, 0, 0, 24),  # 5: low word of args[1] (little endian)
            _insn(_BPF_JEQ_K, 1, 0, _TIOCSTI),  # 6
            _insn(_BPF_JEQ_K, 0, 1, _TIOCLINUX),  # 7
            _insn(_BPF_RET_K, 0, 0, deny),  # 8
            _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),  # 9
            _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_KILL_PROCESS),  # 10
        ]
    )


def args_fd(arguments: list[str]) -> int:
    """A readable descriptor with bwrap's options NUL-separated, for `bwrap --args FD`.

    Passed this way, the options (the home's path among them) are not in the command line
    of the sandbox's pid 1, which CMD can read in its /proc.
    """
    return _pipe_with(b"".join(a.encode() + b"\0" for a in arguments))


def _pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)  # small (< the pipe's 64 KiB): never blocks
    finally:
        os.close(write_end)
    return read_end


def seccomp_fd() -> int | None:
    """A readable descriptor holding the filter, for bwrap's --seccomp (None: no filter)."""
    program = seccomp_program()
    if program is None:
        return None
    return _pipe_with(program)
