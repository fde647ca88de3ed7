"""The user data infra assembles from bootstrap/: deterministic, within EC2's limit, every file once."""

from __future__ import annotations

import ast
import gzip
import shutil
import subprocess

import pytest

from infra.config import ConfigError
from infra.userdata import (
    MAX_USER_DATA_BYTES,
    assemble_script,
    assemble_user_data,
    role_files,
    shipped_text,
)

from .conftest import REPO

BOOTSTRAP = REPO / "bootstrap"


@pytest.mark.parametrize("role", ["notebook", "hub"])
def test_user_data_is_deterministic_compressed_and_within_the_limit(role, tmp_path):
    first, again = assemble_user_data(role), assemble_user_data(role)
    assert first.payload == again.payload
    # A fresh copy (other paths, other mtimes) gives the same bytes: nothing but content goes in.
    copy = tmp_path / "bootstrap"
    shutil.copytree(BOOTSTRAP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert assemble_user_data(role, copy).payload == first.payload
    assert first.compressed and first.payload[:2] == b"\x1f\x8b"
    assert len(first.payload) <= MAX_USER_DATA_BYTES
    assert gzip.decompress(first.payload) == first.script == assemble_script(role)


def test_each_role_gets_its_own_files_and_the_shared_ones():
    shared = ["common/venv.sh", "ec2hub_bootstrap/__init__.py", "ec2hub_bootstrap/host.py",
              "ec2hub_bootstrap/imds.py", "ec2hub_bootstrap/logship.py"]
    assert [str(p) for p in role_files("notebook")] == sorted([
        *shared, "ec2hub_bootstrap/activity.py", "ec2hub_bootstrap/notebook.py",
        "notebook/ec2hub-activity.service", "notebook/ec2hub-nvidia.service", "notebook/install.sh",
        "notebook/ec2hub-singleuser.service", "notebook/user-data.sh",
    ])
    assert [str(p) for p in role_files("hub")] == sorted([
        *shared, "ec2hub_bootstrap/hub.py", "hub/ec2hub-hub-restart.path", "hub/ec2hub-hub-restart.service",
        "hub/ec2hub-hub.service", "hub/ec2hub-settings-watch.service",
        "hub/jupyterhub_config.py", "hub/user-data.sh",
    ])


@pytest.mark.parametrize("role", ["notebook", "hub"])
def test_assembled_script_holds_each_file_once_and_is_shellcheck_clean(role, tmp_path):
    script = assemble_script(role).decode()
    for path in role_files(role):
        text = shipped_text(path)
        assert script.count(f"<<'EC2HUB_END_OF_FILE'\n{text}EC2HUB_END_OF_FILE\n") == 1, path
    assert script.rstrip().endswith(f'exec /bin/bash "$dir/{role}/user-data.sh"')
    # A boothook is run as the file cloud-init writes: the part after its first line.
    (tmp_path / "user-data").write_text(script.removeprefix("#cloud-boothook\n"))
    subprocess.run([str(REPO / ".venv/bin/shellcheck"), "--severity=style", str(tmp_path / "user-data")], check=True)


def test_a_file_that_would_end_the_heredoc_is_refused(tmp_path):
    copy = tmp_path / "bootstrap"
    shutil.copytree(BOOTSTRAP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "notebook/ec2hub-nvidia.service").open("a") as f:
        f.write("EC2HUB_END_OF_FILE\n")
    with pytest.raises(ConfigError, match=r"ec2hub-nvidia.service: must end with a newline and have no line"):
        assemble_script("notebook", copy)


def _without_docstrings(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.parametrize("role", ["notebook", "hub"])
def test_shipped_modules_are_the_repositorys_code_without_docstrings_units_without_comments_and_other_files_byte_for_byte(role):
    for path in role_files(role):
        original, shipped = (BOOTSTRAP / path).read_text(), shipped_text(path)
        if path.parts[0] == "ec2hub_bootstrap":
            # The same program: the shipped module's syntax tree is the original's minus its docstrings.
            assert ast.dump(ast.parse(shipped)) == _without_docstrings(ast.parse(original)), path
            assert len(shipped) < len(original) or not original.strip(), path
        elif path.suffix in (".service", ".path"):
            # The same unit without its comment lines (systemd reads them as nothing).
            kept = [line for line in original.splitlines() if not line.lstrip().startswith(("#", ";"))]
            assert shipped.splitlines() == kept and len(shipped) < len(original), path
        else:
            assert shipped == original, path
