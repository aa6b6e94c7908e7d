"""caps.yaml at start-up and on change: compiled once, reloaded when it changes, last good
configuration kept when the new one is invalid."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capgate.caps import CapsError
from capgate.proxy.addon import reload

CAPS = """\
version: 1
capabilities:
  - name: {name}
    match: {{hosts: [api.test]}}
roles:
  r: {{capabilities: [{name}]}}
"""


def _write(path: Path, name: str, mtime_ns: int) -> None:
    path.write_text(CAPS.format(name=name))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _counting_loads(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = reload.load_caps

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(reload, "load_caps", counting)
    return calls


def test_watcher_reuses_the_start_up_check_of_an_unchanged_file(tmp_path, monkeypatch):
    path = tmp_path / "caps.yaml"
    _write(path, "one", 1_000_000_000)
    calls = _counting_loads(monkeypatch)
    checked = reload.preload(path)
    watcher = reload.CapsWatcher(path, loader=reload.load_caps)
    assert watcher.config is checked
    assert len(calls) == 1


def test_watcher_compiles_again_when_the_file_changed_after_the_check(tmp_path, monkeypatch):
    path = tmp_path / "caps.yaml"
    _write(path, "one", 1_000_000_000)
    calls = _counting_loads(monkeypatch)
    reload.preload(path)
    _write(path, "two", 2_000_000_000)
    watcher = reload.CapsWatcher(path, loader=reload.load_caps)
    assert [c.name for c in watcher.config.capabilities] == ["two"]
    assert len(calls) == 2


def test_invalid_change_keeps_the_last_good_configuration(tmp_path):
    path = tmp_path / "caps.yaml"
    _write(path, "one", 1_000_000_000)
    watcher = reload.CapsWatcher(path)
    path.write_text("version: 1\ncapabilities: [oops\n")
    os.utime(path, ns=(3_000_000_000, 3_000_000_000))
    assert watcher.poll(force=True) is False
    assert [c.name for c in watcher.config.capabilities] == ["one"]
    _write(path, "three", 4_000_000_000)
    assert watcher.poll(force=True) is True
    assert [c.name for c in watcher.config.capabilities] == ["three"]


def test_preload_refuses_an_invalid_file(tmp_path):
    path = tmp_path / "caps.yaml"
    path.write_text("version: 2\n")
    with pytest.raises(CapsError):
        reload.preload(path)
