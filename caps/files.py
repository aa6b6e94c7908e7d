"""Reading a configuration file safely: regular files only, and bounded in size.

A caps path (or a replay fixture) that is a FIFO would hang the reader, a symlink to
/dev/zero would be read until memory runs out, and a huge file would be parsed into a
node tree many times its size. `read_config_text` refuses all three at once: it checks
the file type without opening it, opens it non-blocking, checks the type again on the
open descriptor (the path may have been swapped), and reads at most `limit` + 1 bytes.
"""

from __future__ import annotations

import os
import stat
from os import PathLike

MAX_CAPS_BYTES = 8 * 1024 * 1024  # a caps.yaml larger than this is refused
MAX_FIXTURE_BYTES = 8 * 1024 * 1024  # a replay fixture larger than this is refused


class FileRefused(ValueError):
    """The path is not a readable regular file within the size limit (message: why)."""


def _human(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def read_config_text(path: str | PathLike[str], limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; FileRefused otherwise."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"not a regular file ({_kind(info.st_mode)})")
    if info.st_size > limit:
        raise FileRefused(f"file is larger than the {_human(limit)} limit")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise FileRefused(f"not a regular file ({_kind(opened.st_mode)})")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"file is larger than the {_human(limit)} limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused("not UTF-8 text") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"
