"""`inject kill-hub` finds a host's PID 1 from outside `sandbox up`: by the state directory its
starter names (a PID namespace only, no network namespace)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from chaos_lab import wait_until

from sandbox import faults


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace needs root")
def test_host_pid1_is_the_init_of_the_host_started_for_that_state_directory(tmp_path):
    host = tmp_path / "i-0123456789abcdef0"
    host.mkdir()
    # Like a host's starter: its command line names the state directory; its child is PID 1.
    starter = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sh", "-c", "exec sleep 120", str(host)])
    try:
        pid1 = wait_until(lambda: _found(host), 10, "the host's PID 1")
        status = Path(f"/proc/{pid1}/status").read_text().splitlines()
        nspid = next(line for line in status if line.startswith("NSpid:"))
        assert nspid.split()[-1] == "1" and pid1 != starter.pid
        assert faults.exec_in(pid1, ["true"]).returncode == 0
        with pytest.raises(faults.FaultError, match="no running host i-other"):
            faults.host_pid1("i-other", tmp_path)
    finally:
        starter.kill()
        starter.wait(10)


def _found(host):
    try:
        return faults.host_pid1(host.name, host.parent)
    except faults.FaultError:
        return None
