"""Issue 9's chaos suite: every scenario against a real hub, proxy and single-user servers, the
emulator injecting the faults; each row must read ``0 0 0 yes 0`` (see docs/RELIABILITY.md).

The whole run happens once (module fixture); each scenario's row is its own test. At its end,
`python -m sandbox status` is run against the lab's hub and emulator.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from chaos_lab import ADMIN_TOKEN, REGION, Row, format_table, run, scenarios

# The whole run is the first test's set-up: about 3 minutes here, more on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chaos")
    seen = {}

    def status_of(lab):
        from sandbox import runner

        env_file = workdir / "env.json"
        env_file.write_text(json.dumps({"hub_url": lab.proxy, "api_token": ADMIN_TOKEN, "region": REGION,
                                        "aws_endpoint_url": lab.emulator.endpoint_url, "stack_name": lab.hub_id}))
        saved, runner.ENV_FILE = runner.ENV_FILE, env_file
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                seen["status_rc"] = runner.status()
        finally:
            runner.ENV_FILE = saved
        seen["status"] = out.getvalue()
        seen["instances"] = {i["InstanceId"]: i for i in lab.instances()}
        seen["servers"] = lab.server_states()

    rows, seconds = run(workdir, inspect=status_of)
    print(f"\n{format_table(rows)}\n({seconds:.0f} s)")
    return {"rows": {row.scenario: row for row in rows}, **seen}


@pytest.mark.parametrize("scenario", [s.name for s in scenarios()])
def test_nothing_is_lost(chaos, scenario):
    row: Row = chaos["rows"][scenario]
    assert row.cells()[1:] == ["0", "0", "0", "yes", "0"], "\n".join(row.notes)


def test_sandbox_status_shows_owner_and_sweeper_intent(chaos):
    assert chaos["status_rc"] == 0
    lines = {line.split()[0]: line for line in chaos["status"].splitlines() if line.startswith("i-")}
    for (user, server), state in chaos["servers"].items():
        iid = state.get("instance_id")
        if iid and chaos["instances"].get(iid, {}).get("State", {}).get("Name") == "running":
            assert f"{user} (ready)" in lines[iid] and "keep: owned" in lines[iid], chaos["status"]
    hub_host = [line for line in lines.values() if "(hub host)" in line]
    assert hub_host and all("never swept" in line for line in hub_host), chaos["status"]
