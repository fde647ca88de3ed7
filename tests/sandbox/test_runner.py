"""`make local`'s start-up checks: one clear message, nothing made, when the machine cannot run it."""

import pytest

from sandbox import runner


def test_not_root_is_one_clear_message_and_nothing_is_made(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(runner, "STATE_DIR", tmp_path / ".sandbox")
    monkeypatch.setattr(runner, "PID_FILE", tmp_path / ".sandbox" / "sandbox.pid")
    assert runner.up(pending_s=0, port=0) == 1
    out = capsys.readouterr().out
    assert out == "sandbox: error: the sandbox needs root (it creates network namespaces and overlay mounts): run it as root\n"
    assert not (tmp_path / ".sandbox").exists()


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr(runner.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runner.shutil, "which", lambda tool: None if tool == "nsenter" else "/usr/bin/" + tool)
    with pytest.raises(runner.SandboxError, match="'nsenter' is missing: install iproute2 and util-linux"):
        runner.preflight()
