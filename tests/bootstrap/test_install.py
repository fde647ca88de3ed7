"""bootstrap/notebook/install.sh, the notebook's image steps, run for real (bash, venv, pip) without
the network: the user data's step keeps an environment that is already there (a baked image) and
installs nothing; the image build's step installs the class's packages on top of the base ones."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .conftest import REPO
from .wheels import make_wheel

INSTALL = REPO / "bootstrap/notebook/install.sh"
# The checkout's packages stand in for the index: the base packages are "already satisfied".
SITE_PACKAGES = next((REPO / ".venv/lib").glob("python3*/site-packages"))


@pytest.fixture
def tools(tmp_path):
    """PATH for the script: this Python as python3 (the venv's base) and an EFS client stand-in,
    so no step ever reaches for a package manager of this machine."""
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    efs = bin_dir / "mount.efs"
    efs.write_text("#!/bin/sh\nexit 0\n")
    efs.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.fixture
def no_python(tmp_path):
    """PATH with the coreutils the steps use and no Python: a step that tried to build a venv fails."""
    bin_dir = tmp_path / "coreutils"
    bin_dir.mkdir()
    for tool in ("dirname", "paste", "mkdir"):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    return str(bin_dir)


def bash(command: str, *, venv_dir: Path, path: str, wheels: Path, check: bool = True,
         site: Path = SITE_PACKAGES) -> subprocess.CompletedProcess:
    env = {
        "PATH": path, "HOME": str(venv_dir.parent), "LANG": "C.UTF-8", "VENV": str(venv_dir),
        "PYTHONPATH": str(site), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
    }
    proc = subprocess.run(["/bin/bash", "-c", command, "bash", str(INSTALL)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def serving_venv(directory: Path) -> Path:
    """A venv that serves as a baked one does: jupyterhub-singleuser and the modules it needs."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(directory)
    script = directory / "bin/jupyterhub-singleuser"
    script.write_text(f"#!{directory}/bin/python\nfrom jupyterhub.singleuser import main\nmain()\n")
    script.chmod(0o755)
    return directory


def test_the_user_data_step_keeps_a_baked_environment_and_installs_nothing(tmp_path, no_python):
    baked = serving_venv(tmp_path / "venv")
    (baked / "ec2hub-requirements.txt").write_text("jupyterhub==6.1.1\npandas==2.3.3\n")
    before = sorted(p.relative_to(baked) for p in baked.rglob("*"))
    proc = bash('source "$1"; ensure_notebook_environment', venv_dir=baked, path=no_python, wheels=tmp_path)
    assert proc.stdout.splitlines() == [
        (f"ec2hub-notebook: venv: {baked} has jupyterhub-singleuser and boto3, jupyterlab: nothing to install "
        "(image built with jupyterhub==6.1.1 pandas==2.3.3)")
    ]
    assert sorted(p.relative_to(baked) for p in baked.rglob("*")) == before


def installed_stand_ins(site: Path, names: tuple[str, ...], marker: Path) -> Path:
    """Distributions as pip leaves them (package and .dist-info); importing one appends its name to ``marker``."""
    for name in names:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write({name + chr(10)!r})\n")
        (site / f"{name}-1.0.dist-info").mkdir()
        (site / f"{name}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return site


def test_keeping_a_baked_environment_imports_none_of_its_packages(tmp_path, no_python):
    # Importing jupyterlab to see that it is there took 2.3 s of CPU at every first boot.
    baked = serving_venv(tmp_path / "venv")
    marker = tmp_path / "imported"
    site = installed_stand_ins(tmp_path / "site", ("boto3", "jupyterlab"), marker)
    proc = bash('source "$1"; ensure_notebook_environment', venv_dir=baked, path=no_python, wheels=tmp_path, site=site)
    assert proc.stdout.splitlines() == [
        f"ec2hub-notebook: venv: {baked} has jupyterhub-singleuser and boto3, jupyterlab: nothing to install"]
    assert not marker.exists()


def test_an_environment_without_one_of_the_packages_is_installed_again(tmp_path, no_python):
    partial = serving_venv(tmp_path / "venv")  # e.g. a first boot's install cut short before jupyterlab
    site = installed_stand_ins(tmp_path / "site", ("boto3",), tmp_path / "imported")
    proc = bash('source "$1"; ensure_notebook_environment', venv_dir=partial, path=no_python, wheels=tmp_path,
                site=site, check=False)
    # It goes for the install: on this PATH there is no Python to make a venv with.
    assert proc.returncode == 1
    assert "no Python >= 3.10 on the AMI" in proc.stdout and "ERROR: no Python >= 3.10" in proc.stderr


def test_the_image_step_installs_the_class_packages_over_the_base_and_checks_them(tmp_path, tools, no_python):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "ec2hub_probe", "1.0", "ANSWER = 42\n")
    image = serving_venv(tmp_path / "venv")
    proc = bash('exec /bin/bash "$1" image ec2hub_probe==1.0', venv_dir=image, path=tools, wheels=wheels)
    assert "ec2hub-notebook: efs-client: present" in proc.stdout
    assert proc.stdout.splitlines()[-1] == f"ec2hub-notebook: done: the image's environment is in {image}"
    assert (image / "ec2hub-requirements.txt").read_text().splitlines()[-1] == "ec2hub_probe==1.0"
    probe = subprocess.run([str(image / "bin/python"), "-c", "import ec2hub_probe; print(ec2hub_probe.__file__)"],
                           capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert probe.stdout.startswith(str(image / "lib"))  # in the image's venv, not elsewhere
    # The instance's first boot on that image: nothing to install.
    again = bash('source "$1"; ensure_notebook_environment', venv_dir=image, path=no_python, wheels=wheels)
    assert "nothing to install" in again.stdout and "ec2hub_probe==1.0" in again.stdout


def test_a_class_package_that_cannot_be_installed_fails_the_build_with_the_reason(tmp_path, tools):
    proc = bash('exec /bin/bash "$1" image no-such-package==9.9', venv_dir=serving_venv(tmp_path / "venv"),
                path=tools, wheels=tmp_path, check=False)
    assert proc.returncode == 1
    assert "ec2hub-notebook: venv: ERROR: pip install failed" in proc.stderr
