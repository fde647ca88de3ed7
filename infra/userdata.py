"""User data for the launch templates and the hub, assembled from the files of bootstrap/.

An instance's user data is one shell script: it writes the role's files of bootstrap/ (the Python
package ec2hub_bootstrap without the other role's launcher, common/ and <role>/) under
/opt/ec2hub/bootstrap, then runs <role>/user-data.sh from there. Shell scripts and config files
go byte for byte, units without their comment lines, the package's modules without their
docstrings and comments (an ast round trip, :func:`shipped_text`): the same code, which keeps the
notebook's user data under EC2's limit (tracebacks on an instance then number the lines of the
shipped module, not of the repository's file). The same files always give the same bytes (sorted, no
timestamps), so an unchanged bootstrap never makes a new launch template version. cloud-init runs
a shell script user data once per instance ("scripts-user", frequency once-per-instance); what must
happen on every start is in the units those files install (docs/ARCHITECTURE.md §10).

EC2 takes at most 16 KB of user data "in raw form, before it is base64-encoded" (EC2 user guide,
"Run commands when you launch an EC2 instance with user data input"). A bigger script is sent
gzip-compressed, which EC2 counts as raw bytes and cloud-init decompresses before running it
(cloud-init docs, "User-data formats": "gzip compressed content"). A script too big even then is an
error at synth, not a failed launch at spawn time. Compression is deterministic (mtime 0).
"""

from __future__ import annotations

import ast
import base64
import gzip
import shlex
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT, ConfigError

MAX_USER_DATA_BYTES = 16 * 1024
GZIP_MAGIC = b"\x1f\x8b"
BOOTSTRAP = REPO_ROOT / "bootstrap"
ROLES = ("notebook", "hub")
# Where bootstrap/ goes on the instance (PYTHONPATH of the steps, which import ec2hub_bootstrap).
INSTANCE_DIR = "/opt/ec2hub/bootstrap"
PACKAGE = "ec2hub_bootstrap"
UNIT_SUFFIXES = {".service", ".path"}
SOURCE_SUFFIXES = {".py", ".sh", *UNIT_SUFFIXES}
END_OF_FILE = "EC2HUB_END_OF_FILE"


def _display(path: Path) -> str:
    return (
        str(path.relative_to(REPO_ROOT))
        if path.is_relative_to(REPO_ROOT)
        else str(path)
    )


@dataclass(frozen=True)
class BootstrapUserData:
    """A user-data script and the bytes EC2 receives for it."""

    source: str
    script: bytes
    payload: bytes

    @property
    def compressed(self) -> bool:
        return self.payload != self.script

    @property
    def base64(self) -> str:
        return base64.b64encode(self.payload).decode("ascii")

    @property
    def notice(self) -> str | None:
        """A synth-time warning when the script had to be compressed."""
        if not self.compressed:
            return None
        return (
            f"{self.source} is {len(self.script)} bytes, over EC2's {MAX_USER_DATA_BYTES}-byte "
            f"user-data limit: it is sent gzip-compressed ({len(self.payload)} bytes), which "
            "cloud-init unpacks at boot. Anything else that runs this user data must gunzip it first."
        )


def user_data_from_script(source: str, script: bytes) -> BootstrapUserData:
    """The bytes EC2 gets for ``script``: as is, or gzip-compressed if EC2 would refuse it as is."""
    payload = script
    if len(script) > MAX_USER_DATA_BYTES:
        payload = gzip.compress(script, compresslevel=9, mtime=0)
    if len(payload) > MAX_USER_DATA_BYTES:
        raise ConfigError(
            f"{source}: {len(script)} bytes ({len(payload)} gzip-compressed), but EC2 accepts "
            f"at most {MAX_USER_DATA_BYTES} bytes of user data"
        )
    return BootstrapUserData(source=source, script=script, payload=payload)


def load_user_data(path: Path) -> BootstrapUserData:
    """A ready-made user-data script file (custom images, tests): read, compressed if needed."""
    try:
        script = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{_display(path)}: cannot read user data: {error.strerror}"
        ) from None
    return user_data_from_script(_display(path), script)


# Modules of the package that only one role runs besides its launcher (the hub has no activity agent).
ROLE_MODULES = {"notebook": ("activity",)}


def role_files(role: str, root: Path = BOOTSTRAP) -> list[Path]:
    """The files of ``role``'s user data, relative to ``root`` (bootstrap/), sorted."""
    if role not in ROLES:
        raise ConfigError(f"bootstrap role {role!r}: one of {', '.join(ROLES)}")
    others = {Path(PACKAGE) / f"{module}.py" for other in ROLES if other != role
              for module in (other, *ROLE_MODULES.get(other, ()))}
    files = [
        path.relative_to(root)
        for directory in (PACKAGE, "common", role)
        for path in (root / directory).rglob("*")
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts
    ]
    return sorted(set(files) - others)


def minified_python(source: str) -> str:
    """``source`` without docstrings and comments: ``ast.unparse`` of its tree minus each module's,
    class's and function's leading string. The code is unchanged (nothing here reads ``__doc__``)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def unit_without_comments(text: str) -> str:
    """A unit file without its comment lines (systemd.syntax(7): a line whose first non-blank
    character is ``#`` or ``;``); every other line as it is (the units continue no line)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith(("#", ";")))


def shipped_text(path: Path | str, root: Path = BOOTSTRAP) -> str:
    """The file ``path`` (relative to ``root``) as the user data writes it on the instance."""
    path = Path(path)
    text = (root / path).read_text(encoding="utf-8")
    if path.suffix in UNIT_SUFFIXES:
        return unit_without_comments(text)
    return minified_python(text) if path.parts[0] == PACKAGE and path.suffix == ".py" else text


def assemble_script(role: str, root: Path = BOOTSTRAP) -> bytes:
    """The user-data script of ``role``: writes its files under INSTANCE_DIR, runs its user-data.sh.

    Each file is a quoted heredoc (nothing in it expands); a file must be UTF-8 text ending in a
    newline with no line equal to the heredoc's end marker.
    """
    files = role_files(role, root)
    return files_script(f"ec2hub {role} user data", files, Path(role) / "user-data.sh", root=root,
                        early_unit=EARLY_UNITS.get(role))


# The roles whose user data is a cloud-init boothook, and the unit it runs the bootstrap as (its
# journal identifier: the name without ".service"). cloud-init runs a boothook in its network stage,
# on every boot, with INSTANCE_ID set; this one acts once per instance id, and the unit starts at
# sysinit.target, beside cloud-init's config and final stages (docs/ARCHITECTURE.md §10).
EARLY_UNITS = {"notebook": "ec2hub-user-data.service"}

EARLY_START = """\
# A boothook: cloud-init runs it early on every boot. Once per instance id it runs the bootstrap as
# {unit} (docs/ARCHITECTURE.md §10); run otherwise (no INSTANCE_ID), it runs it here."""

EARLY_ONCE = """\
once=/var/lib/ec2hub/user-data-instance
if [[ -n "${INSTANCE_ID:-}" && "$(cat "$once" 2>/dev/null)" == "$INSTANCE_ID" ]]; then
  exit 0  # this instance's user data ran at its first boot
fi"""

EARLY_RUN = """\
if [[ -n "${{INSTANCE_ID:-}}" ]]; then
  mkdir -p "${{once%/*}}"
  printf '%s\\n' "$INSTANCE_ID" >"$once"
fi
if [[ -n "${{INSTANCE_ID:-}}" && -d /run/systemd/system ]]; then
  # After=, Before= as cloud-final.service's
  exec systemd-run --no-block --quiet --unit={unit} --description='{title}' -p Type=oneshot \\
    -p RemainAfterExit=yes -p Wants=network-online.target -p After=network-online.target \\
    -p Before=apt-daily.service -p StandardOutput=journal+console -p SyslogIdentifier={ident} \\
    /bin/bash {run}
fi"""

# The image steps of a notebook image (infra/images.py): the venv helpers and the install script.
IMAGE_FILES = (Path("common/venv.sh"), Path("notebook/install.sh"))


def image_script(requirements: list[str], root: Path = BOOTSTRAP) -> bytes:
    """The build script of a notebook image: the same install.sh the user data sources, run as
    ``install.sh image <requirement>...`` (each requirement one shell word, quoted)."""
    return files_script(
        "ec2hub notebook image build", list(IMAGE_FILES), Path("notebook/install.sh"),
        args=["image", *requirements], root=root,
    )


# The image steps of the hub's image: its user data's own script, run as `user-data.sh image`.
HUB_IMAGE_FILES = (Path("common/venv.sh"), Path("hub/user-data.sh"))


def hub_image_script(root: Path = BOOTSTRAP) -> bytes:
    """The build script of the hub's image: the hub user data's venv, Node and proxy steps
    (``user-data.sh image``), from the same files the hub user data writes."""
    return files_script("ec2hub hub image build", list(HUB_IMAGE_FILES), Path("hub/user-data.sh"),
                        args=["image"], root=root)


def files_script(
    title: str, files: list[Path], entry: Path, *, args: list[str] = (), root: Path = BOOTSTRAP,
    early_unit: str | None = None,
) -> bytes:
    """A bash script that writes ``files`` (relative to ``root``) under INSTANCE_DIR and runs
    ``entry`` from there with ``args``; the same files give the same bytes.

    With ``early_unit`` the script is a cloud-init boothook (see :data:`EARLY_START`): it acts once
    per instance id and runs ``entry`` as the transient systemd unit ``early_unit``."""
    if entry not in files:
        raise ConfigError(f"{_display(root / entry)}: missing (the {title} runs it)")
    run = " ".join([f'"$dir/{entry}"', *(shlex.quote(a) for a in args)])
    lines = [
        *(["#cloud-boothook"] if early_unit else []),
        "#!/bin/bash",
        f"# {title}, assembled by infra/userdata.py from these files of the",
        f"# repository's bootstrap/ (modules without docstrings), written under {INSTANCE_DIR}; then it runs",
        f"# {entry} from there:",
        *(f"#   {path}" for path in files),
        *(EARLY_START.format(unit=early_unit).splitlines() if early_unit else []),
        "set -euo pipefail",
        "umask 022",
        *(EARLY_ONCE.splitlines() if early_unit else []),
        f"dir={INSTANCE_DIR}",
        'rm -rf "$dir.new"',
        *(f'mkdir -p "$dir.new/{d}"' for d in sorted({str(p.parent) for p in files})),
    ]
    for path in files:
        text = shipped_text(path, root)
        if not text.endswith("\n") or END_OF_FILE in text.splitlines():
            raise ConfigError(
                f"{_display(root / path)}: must end with a newline and have no line {END_OF_FILE}"
            )
        lines += [f"cat >\"$dir.new\"/{shlex.quote(str(path))} <<'{END_OF_FILE}'", text + END_OF_FILE]
    lines += ['rm -rf "$dir"', 'mv "$dir.new" "$dir"']
    if early_unit:
        lines += EARLY_RUN.format(unit=early_unit, ident=early_unit.removesuffix(".service"), title=title,
                                  run=run).splitlines()
    lines.append(f"exec /bin/bash {run}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def assemble_user_data(role: str, root: Path = BOOTSTRAP) -> BootstrapUserData:
    """``role``'s user data as EC2 gets it (see the module docstring)."""
    return user_data_from_script(f"the {role} user data", assemble_script(role, root))
