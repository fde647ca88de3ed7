"""benchmarks/hub_scale.py at a tiny N, so the hub-level scale figure cannot rot unnoticed.

It runs the real thing (emulator, JupyterHub, configurable-http-proxy) on 20 servers and checks
what the figure rests on: every server polled by JupyterHub's start-up check and listed ready, each
poll answered from the watcher's snapshot, and the hub not rewriting any server's URL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from spawner_testing import REPO


def test_hub_restart_polls_every_seeded_server_once():
    env = {**os.environ, "PATH": f"{REPO / 'node_modules/.bin'}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):  # the benchmark runs its own emulator
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/hub_scale.py"), "--servers", "20"],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    line = next((x for x in done.stdout.splitlines() if x.startswith("servers=")), "")
    assert line, done.stdout + done.stderr[-4000:]
    figures = dict(re.findall(r"(\w+)=(\S+)", line))
    assert figures["servers"] == figures["polled"] == figures["ready"] == figures["still_running"] == "20", line
    assert figures["no_snapshot"] == figures["stopped_while_down"] == figures["url_rewrites"] == "0", line
    assert 0 < float(figures["hub_restart_s"]) < 200 and 50 < float(figures["hub_rss_mb"]) < 1000, line
    assert done.returncode == 0, line
