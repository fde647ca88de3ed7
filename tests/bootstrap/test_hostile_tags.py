"""Tag values are data: hostile ones change only the derived unix user name and execute nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ec2hub_bootstrap import notebook as launch

from .conftest import (
    NOTEBOOK_USER_DATA,
    client,
    needs_root,
    notebook_tags,
)

pytestmark = [needs_root, pytest.mark.slow]

SECRET_PREFIX = "/ec2hub/ec2hub-test/servers/"
PWNED = "/tmp/pwned"
INJECTIONS = [
    f"$(touch {PWNED})",
    f"`touch {PWNED}`",
    f"'; touch {PWNED}; echo '",
    f'"; touch {PWNED}; echo "',
    f"x\ntouch {PWNED}\n",
]
HOSTILE_USERS = [
    pytest.param(INJECTIONS[0], id="command-substitution"),
    pytest.param(INJECTIONS[1], id="backticks"),
    pytest.param(INJECTIONS[2] + INJECTIONS[3], id="quotes"),
    pytest.param(INJECTIONS[4], id="newlines"),
    pytest.param("Zoë 🚀 名前 $HOME", id="unicode"),
    pytest.param(("a" * 90 + INJECTIONS[0]) * 2, id="200-characters"),
]


@pytest.fixture(scope="module")
def launcher():
    return launch


def boot(make_host, aws, iid: str, ip: str, tags: dict[str, str], **host):
    client(aws, "ssm").put_parameter(
        Name=SECRET_PREFIX + iid,
        Value=json.dumps({"JUPYTERHUB_API_TOKEN": "t0ken-" + iid, "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/"}),
        Type="SecureString",
        Overwrite=True,
    )
    host = make_host(iid, ip, tags, **host)
    host.start(NOTEBOOK_USER_DATA)
    return host


def assert_nothing_ran(host):
    assert not Path(PWNED).exists(), "created on the machine"
    assert not (host.upper / PWNED.lstrip("/")).exists(), "created inside the instance"
    assert host.exec(["test", "-e", PWNED]).returncode == 1


@pytest.mark.parametrize("hub_user", HOSTILE_USERS)
def test_hostile_tags_change_only_the_user_name(hub_user, launcher, aws, make_host):
    assert len(launcher.unix_name(hub_user)) <= 32
    # Every other free-form tag is hostile too.
    tags = notebook_tags(
        hub_user, **{"ec2hub:server": INJECTIONS[1], "ec2hub:class": INJECTIONS[2], "ec2hub:hub": INJECTIONS[4]}
    )
    host = boot(make_host, aws, "i-0b0000000000000aa", "10.0.1.20", tags)
    assert host.wait_for_user_data() == 0, host.logs
    expected = launcher.unix_name(hub_user)
    assert f"-> unix user {expected}\n" in host.console_output
    assert host.exec(["id", "-un", expected]).stdout.strip() == expected
    passwd = (host.upper / "etc/passwd").read_text()
    assert passwd.count("\n") == Path("/etc/passwd").read_text().count("\n") + 1, "exactly one user added"
    assert_nothing_ran(host)


def test_hostile_efs_tag_fails_clearly_and_runs_nothing(aws, make_host):
    host = boot(make_host, aws, "i-0b0000000000000ab", "10.0.1.21",
                notebook_tags("alice", efs=f"fs-1$(touch {PWNED})"))
    assert host.wait_for_user_data() != 0
    assert "is not an EFS file system id" in host.console_output
    assert_nothing_ran(host)


def test_hostile_access_point_tag_fails_clearly_and_runs_nothing(aws, make_host):
    """No access point, no EFS home: the file system admits notebooks only through one."""
    host = boot(make_host, aws, "i-0b0000000000000ac", "10.0.1.22",
                notebook_tags("alice", access_point=f"fsap-1$(touch {PWNED})"), efs=False)
    assert host.wait_for_user_data() != 0
    assert "tag ec2hub:efs-access-point" in host.console_output
    assert "is not an access point id (fsap-...)" in host.console_output
    assert_nothing_ran(host)
