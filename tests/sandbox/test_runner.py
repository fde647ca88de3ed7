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


def test_env_json_is_replaced_whole_while_it_is_read(monkeypatch, tmp_path):
    """The keeper rewrites .sandbox/env.json (a hub host replaced) while `python -m sandbox deploy`
    polls it: a reader sees the old document or the new one, never an empty or half-written file
    (a fresh-clone run's redeploy failed on JSONDecodeError), and the file stays root's only."""
    import json
    import stat
    import threading
    import types

    env_file = tmp_path / "env.json"
    monkeypatch.setattr(runner, "ENV_FILE", env_file)
    sandbox = types.SimpleNamespace(env={"hub_instance_id": "i-0", "filler": "x" * 200_000})
    runner.Sandbox.write_env(sandbox)
    done, torn = threading.Event(), []

    def rewrite():
        for n in range(1, 200):
            sandbox.env["hub_instance_id"] = f"i-{n}"
            runner.Sandbox.write_env(sandbox)
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    while not done.is_set():
        text = env_file.read_text()
        try:
            json.loads(text)
        except ValueError:
            torn.append(len(text))
    writer.join()
    assert torn == [], f"{len(torn)} reads found a partial env.json"
    assert json.loads(env_file.read_text())["hub_instance_id"] == "i-199"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["env.json"]  # no partial file left
