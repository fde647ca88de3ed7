"""ec2hub notebook launcher: tags and secret -> unix user, home, env file, jupyterhub-singleuser.

Run with /opt/ec2hub/venv's Python as ``python -m ec2hub_bootstrap.notebook <command>`` (PYTHONPATH
/opt/ec2hub/bootstrap), as root:

``boot``      once per instance, from the user data (user-data.sh): EFS home, unix user, the units;
              then, with systemd as PID 1, (re)start the server's unit; without it (a container,
              the local sandbox) ``gpu`` and ``prestart`` here, then the server in the foreground.
``prestart``  on every start of the server (the unit's ExecStartPre=+): this server's secret from
              SSM -> /etc/ec2hub/singleuser.env, so a reboot, a stop/start or a restart reads the
              current secret. The first start after ``boot`` uses the secret ``boot`` fetched
              beside its other steps moments before (FRESH_MARK).
``gpu``       on every start, before the server (ec2hub-nvidia.service): the NVIDIA device nodes,
              where the driver's tools are installed; nothing otherwise.

Every value from a tag or the secret is passed to commands as argv or written to files by Python;
none reaches a shell.
"""

from __future__ import annotations

import grp
import hashlib
import importlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from .host import Console, shown, systemd_is_pid1, unit_command, write_if_changed
from .imds import Imds, read_tags
from .logship import ensure_log_shipping

ETC = "/etc/ec2hub"
ENV_FILE = ETC + "/singleuser.env"
# Written by boot once it fetched the secret for the server's first start; /run is empty at every
# boot, and the first prestart removes it: every later start fetches the secret itself.
FRESH_MARK = "/run/ec2hub/singleuser.env.fresh"
UNIT_NAME = "ec2hub-singleuser.service"
GPU_UNIT_NAME = "ec2hub-nvidia.service"
ACTIVITY_UNIT_NAME = "ec2hub-activity.service"  # the activity agent and backstop (activity.py)
UNIT_DIR = "/etc/systemd/system"
DROPIN = f"{UNIT_DIR}/{UNIT_NAME}.d/10-user.conf"
# The unit files, as the user data wrote them next to this module.
SOURCES = Path(__file__).resolve().parent.parent / "notebook"
UNIX_PREFIX = "jupyter-"
UNIX_MAX = 32
SECRET_WAIT_S = 900
INSTANCE_OWNED_ENV = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PYTHONPATH", "PYTHONHOME"}

console = Console("ec2hub-notebook")
log, die, run = console.log, console.die, console.run


# --- instance facts -------------------------------------------------------------------------------
def instance_facts() -> tuple[str, str, dict[str, str]]:
    """Instance id, region and ec2hub tags from IMDSv2, checked."""
    imds = Imds(console).wait()
    instance_id = imds.get("meta-data/instance-id")
    region = imds.get("meta-data/placement/region")
    if not re.fullmatch(r"i-[0-9a-f]{8,40}", instance_id) or not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
        die("imds", f"unexpected instance id {shown(instance_id)} or region {shown(region)}")
    log("imds", f"instance {instance_id} in {region}")
    tags = read_tags(imds, required=("ec2hub:user", "ec2hub:secret-prefix"), who_sets="the spawner at launch")
    if not re.fullmatch(r"/[A-Za-z0-9_./-]+/", tags["ec2hub:secret-prefix"]):
        die("tags", f"ec2hub:secret-prefix {shown(tags['ec2hub:secret-prefix'])} is not an SSM path prefix (/.../)")
    return instance_id, region, tags


# --- names ----------------------------------------------------------------------------------------
def unix_name(hub_user: str) -> str:
    """A safe, deterministic unix user name for a JupyterHub user name (kubespawner-style slug).

    ``jupyter-<name>`` when the name is already lowercase letters, digits and single dashes and
    fits; otherwise ``jupyter-<stripped, at most 13>---<8 hex of sha256>``, so two different hub
    names never share a unix user. At most 32 characters, starts with a letter, never a system
    account's name (the prefix).
    """
    room = UNIX_MAX - len(UNIX_PREFIX)
    if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", hub_user) and len(hub_user) <= room:
        return UNIX_PREFIX + hub_user
    digest = hashlib.sha256(hub_user.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stripped = re.sub(r"[^a-z0-9]+", "-", hub_user.lower()).strip("-")
    stripped = stripped[: room - 3 - len(digest)].strip("-") or "x"
    return f"{UNIX_PREFIX}{stripped}---{digest}"


# --- first boot -----------------------------------------------------------------------------------
def ensure_user(name: str, home: str) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwnam(name)
        log("user", f"{name} exists (uid {entry.pw_uid})")
        return entry
    except KeyError:
        pass
    argv = ["useradd", "--shell", "/bin/bash", "--home-dir", home, "--no-create-home"]
    ids = stable_ids(name, home)
    if ids is None:
        argv.append("--user-group")
    else:
        try:
            grp.getgrnam(name)
        except KeyError:
            run("user", ["groupadd", "--gid", str(ids[1]), name])
        argv += ["--uid", str(ids[0]), "--gid", name]
    run("user", [*argv, name])
    entry = pwd.getpwnam(name)
    log("user", f"created {name} (uid {entry.pw_uid})")
    return entry


def stable_ids(name: str, home: str) -> tuple[int, int] | None:
    """(uid, gid) of the home's owner when it is on EFS (its access point made it with the ids
    EFS enforces), else derived from the name; None if taken here (useradd then chooses)."""
    try:
        st = os.stat(home) if os.path.ismount(home) else None
    except OSError:
        st = None
    uid = 200000 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 800000
    ids = (st.st_uid, st.st_gid) if st else (uid, uid)
    if min(ids) < 1000:
        return None
    try:
        pwd.getpwuid(ids[0])
        return None
    except KeyError:
        return ids


def ensure_efs(tags: dict[str, str], home: str) -> bool:
    """The user's home: EFS through the user's access point (tag ec2hub:efs-access-point), which
    EFS confines to /home/<unix name> and enters as the user's uid, mounted on ``home``."""
    efs_id, ap = tags.get("ec2hub:efs"), tags.get("ec2hub:efs-access-point", "")
    if not efs_id:
        log("efs", "no ec2hub:efs tag: the home directory is on this instance's disk and is lost when it terminates")
        return False
    if not re.fullmatch(r"fs-[0-9a-f]{8,40}", efs_id):
        die("efs", f"tag ec2hub:efs {shown(efs_id)} is not an EFS file system id (fs-...)")
    if not re.fullmatch(r"fsap-[0-9a-f]{8,40}", ap):
        die("efs", f"tag ec2hub:efs-access-point {shown(ap)} is not an access point id (fsap-...): "
            "the file system admits notebooks only through their user's access point, made by the spawner")
    if os.path.ismount(home):
        log("efs", f"{home} is already mounted")
        return True
    os.makedirs(home, mode=0o755, exist_ok=True)
    if not shutil.which("mount.efs"):
        install_efs_client()
    options = f"tls,iam,accesspoint={ap}"
    run("efs", ["mount", "-t", "efs", "-o", options, f"{efs_id}:/", home])
    # With systemd, a rebooted instance mounts it again before the server starts (user data runs
    # only once per instance there).
    ensure_fstab_line(f"{efs_id}:/ {home} efs _netdev,{options} 0 0")
    log("efs", f"mounted {efs_id} through {ap} at {home} (TLS, IAM)")
    return True


def install_efs_client() -> None:
    """The EFS client, by the image steps' own script (notebook/install.sh: one list of packages)."""
    log("efs", "no mount.efs on this AMI: installing the EFS client")
    run("efs", ["/bin/bash", str(SOURCES / "install.sh"), "efs-client"])


def ensure_fstab_line(line: str) -> None:
    """Add one line to /etc/fstab when systemd will read it at the next boot; idempotent."""
    if not systemd_is_pid1():
        return
    with open("/etc/fstab", encoding="utf-8") as f:
        current = f.read()
    if line in current.splitlines():
        return
    with open("/etc/fstab", "a", encoding="utf-8") as f:
        f.write(("" if current.endswith("\n") or not current else "\n") + line + "\n")
    log("fstab", f"added {line.split()[1]}")


def ensure_home(user: pwd.struct_passwd, on_efs: bool) -> str:
    home = user.pw_dir
    if on_efs:
        log("home", f"{home}: EFS, owned by uid {os.stat(home).st_uid}")
    else:
        created = ensure_dir(home, user)
        log("home", f"{home} ({'created' if created else 'exists'}, local disk)")
    return home


def ensure_dir(path: str, owner: pwd.struct_passwd | None) -> bool:
    created = not os.path.isdir(path)
    if created:
        os.makedirs(path, mode=0o700 if owner else 0o755)
    if owner and created:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return created


def user_environment(home: str) -> dict[str, str]:
    """Where the user's own packages go and how the server, its kernels and terminals see them.

    The image's venv is root's and read-only (ProtectSystem=strict), and pip refuses ``--user``
    in a venv that does not see the system site-packages. So pip installs with the prefix
    ``<home>/.local`` (PIP_PREFIX: every ``pip install``, ``%pip install`` in a kernel, a terminal's
    pip), and PYTHONPATH puts that prefix's site-packages (pure and platform, the venv Python's
    own scheme; this step runs with that Python) before the image's, so the user's packages are
    importable and may shadow the image's. The home is on EFS: they outlive restarts and instances.
    """
    prefix = f"{home}/.local"
    paths = [sysconfig.get_path(kind, "posix_prefix", vars={"base": prefix, "platbase": prefix})
             for kind in ("purelib", "platlib")]
    _, unit_env = unit_command((SOURCES / UNIT_NAME).read_text(encoding="utf-8"))
    return {
        "PIP_PREFIX": prefix,
        "PYTHONPATH": ":".join(dict.fromkeys(paths)),
        "PATH": f"{prefix}/bin:{unit_env['PATH']}",
    }


def dropin_text(user: pwd.struct_passwd, home: str) -> str:
    """This instance's part of the server's unit: who it runs as and where (the rest is static)."""
    environment = "".join(f"Environment={k}={v}\n" for k, v in user_environment(home).items())
    return f"""\
# ec2hub: this instance's user and home, written at first boot by bootstrap/ec2hub_bootstrap/notebook.py.
[Unit]
Description=ec2hub Jupyter server for {user.pw_name}
# The home (an EFS bind mount after a reboot, from /etc/fstab) must be there first.
RequiresMountsFor={home}

[Service]
User={user.pw_name}
Group={user.pw_gid}
WorkingDirectory={home}
ReadWritePaths={home}
# The user's own packages, in the home over the image's (user_environment()).
{environment}"""


def ensure_units(user: pwd.struct_passwd, home: str) -> bool:
    """Install the server's unit, its drop-in, the GPU oneshot and the activity agent; True if any changed."""
    os.makedirs(os.path.dirname(DROPIN), mode=0o755, exist_ok=True)
    changed = False
    for name in (UNIT_NAME, GPU_UNIT_NAME, ACTIVITY_UNIT_NAME):
        text = (SOURCES / name).read_text(encoding="utf-8")
        changed |= write_if_changed(f"{UNIT_DIR}/{name}", text, 0o644)
    changed |= write_if_changed(DROPIN, dropin_text(user, home), 0o644)
    return changed


def start_service(user: pwd.struct_passwd, home: str) -> None:
    """systemd as PID 1: install the units and (re)start the server; its ExecStartPre= fetches the secret."""
    changed = ensure_units(user, home)
    if changed:
        run("service", ["systemctl", "daemon-reload"])
    # --no-reload: the manager has read the units at the daemon-reload above; the links enable
    # makes count at the next boot. enable's own reload doubled the 0.2 s a reload takes here.
    run("service", ["systemctl", "enable", "--no-reload", UNIT_NAME, ACTIVITY_UNIT_NAME])
    # restart also when unchanged: a second run of the user data means "apply it again".
    run("service", ["systemctl", "restart" if changed else "start", UNIT_NAME, ACTIVITY_UNIT_NAME])
    log("service", f"{UNIT_NAME} {'(re)started' if changed else 'running, unchanged'}")


def exec_foreground(user: pwd.struct_passwd, home: str) -> None:
    """No systemd: the unit's ExecStart= here, as the user, with its Environment= and the env
    file, as systemd would set them (never a shell)."""
    command, unit_env = unit_command((SOURCES / UNIT_NAME).read_text(encoding="utf-8"))
    with open(ENV_FILE, encoding="utf-8") as f:
        env = {"LANG": os.environ.get("LANG", "C.UTF-8"), **unit_env, **parse_env_file(f.read())}
    env.update(user_environment(home))
    env.update(HOME=home, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell or "/bin/bash")
    argv = [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "--no-new-privs", "--", *command,
    ]
    log("service", f"no systemd (PID 1 is not systemd): running jupyterhub-singleuser as {user.pw_name} in the foreground")
    os.chdir(home)
    os.umask(0o077)
    os.execvpe(argv[0], argv, env)


def boot() -> None:
    """Once per instance (the user data)."""
    booted = systemd_is_pid1()
    if booted:  # importing boto3 is most of the secret's fetch below: it begins now
        threading.Thread(target=importlib.import_module, args=("boto3",), daemon=True).start()
    instance_id, region, tags = instance_facts()
    name = unix_name(tags["ec2hub:user"])
    log("tags", f"hub {shown(tags.get('ec2hub:hub', ''))} user {shown(tags['ec2hub:user'])} "
        f"server {shown(tags.get('ec2hub:server', ''))} class {shown(tags.get('ec2hub:class', ''))} "
        f"-> unix user {name}")
    if booted:
        # The first start's secret, fetched beside the steps below rather than after them in the
        # unit's prestart (boto3's client alone is about 0.5 s of CPU; the spawner wrote the secret
        # just after launch).
        prefetch = threading.Thread(target=prefetch_env_file, args=(instance_id, region, tags))
        prefetch.start()
    on_efs = ensure_efs(tags, "/home/" + name)
    user = ensure_user(name, "/home/" + name)
    home = ensure_home(user, on_efs)
    if booted:
        ensure_log_shipping(console, "notebook", tags.get("ec2hub:hub", ""))  # before the server starts
        prefetch.join()
        start_service(user, home)
        log("done", f"jupyterhub-singleuser for {name} is {UNIT_NAME}")
        return
    # What the units do on every start, then the server.
    ensure_gpu_devices()
    write_env_file(instance_id, region, tags)
    exec_foreground(user, home)


# --- every start ----------------------------------------------------------------------------------
class SecretNotYet(Exception):
    """fetch_secret with ``wait=False``: the secret is not there (yet)."""


def fetch_secret(region: str, name: str, *, wait: bool = True) -> dict[str, str]:
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client(
        "ssm", region_name=region,
        config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 5}),
    )
    deadline = time.monotonic() + SECRET_WAIT_S
    delay, waited = 1.0, False
    while True:
        try:
            value = client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
            break
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            # Written by the spawner just after launch; its tag (the IAM condition) may lag too.
            if code not in ("ParameterNotFound", "AccessDeniedException") or time.monotonic() > deadline:
                die("secret", f"GetParameter {name}: {code or exc}")
            if not wait:
                raise SecretNotYet(code) from None
        except botocore.exceptions.BotoCoreError as exc:
            if time.monotonic() > deadline:
                die("secret", f"GetParameter {name}: {exc}")
        if not waited:
            log("secret", f"waiting for {name}")
            waited = True
        time.sleep(delay)
        delay = min(delay * 2, 15)
    try:
        env = json.loads(value)
    except ValueError:
        die("secret", f"{name} is not JSON")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
        and isinstance(v, str) and "\0" not in v
        for k, v in env.items()
    ):
        die("secret", f"{name} must be a JSON object of environment variable names to strings")
    # The instance, not the hub, decides who and where the server runs as.
    dropped = sorted(k for k in env if k in INSTANCE_OWNED_ENV or k.startswith("LD_"))
    for key in dropped:
        del env[key]
    if dropped:
        log("secret", f"ignoring {', '.join(dropped)} from the secret (set by this instance)")
    if not env.get("JUPYTERHUB_API_TOKEN"):
        die("secret", f"{name} has no JUPYTERHUB_API_TOKEN")
    log("secret", f"read {name} ({len(env)} variables)")
    return env


def env_file_text(env: dict[str, str]) -> str:
    """systemd EnvironmentFile syntax: double-quoted, with \\ " ` $ escaped (no expansion)."""
    lines = ["# ec2hub: jupyterhub-singleuser environment, from this server's SSM SecureString"]
    for key in sorted(env):
        value = re.sub(r'([\\"`$])', r"\\\1", env[key])
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> dict[str, str]:
    """Read back what env_file_text wrote, without a shell."""
    env = {}
    for match in re.finditer(r'^([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"$', text, re.MULTILINE | re.DOTALL):
        env[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2), flags=re.DOTALL)
    return env


def write_env_file(instance_id: str, region: str, tags: dict[str, str], *, wait: bool = True) -> bool:
    """The current secret -> the env file (root 0600); True if it changed."""
    env = fetch_secret(region, tags["ec2hub:secret-prefix"] + instance_id, wait=wait)
    os.makedirs(ETC, mode=0o755, exist_ok=True)
    changed = write_if_changed(ENV_FILE, env_file_text(env), 0o600)
    log("env", f"{ENV_FILE} {'written' if changed else 'unchanged'} (root, 0600)")
    return changed


def prefetch_env_file(instance_id: str, region: str, tags: dict[str, str]) -> None:
    """boot's fetch for the server's first start, without waiting for the secret: the env file,
    then FRESH_MARK. Otherwise no mark: that start's prestart fetches (and waits, or fails the
    start with the reason)."""
    try:
        write_env_file(instance_id, region, tags, wait=False)
    except SecretNotYet as error:
        log("secret", f"not there yet ({error}): the server's unit waits for it")
        return
    except BaseException:  # noqa: BLE001 (die() said why and raised SystemExit; this is a thread)
        log("secret", "the server's unit fetches it again")
        return
    os.makedirs(os.path.dirname(FRESH_MARK), mode=0o755, exist_ok=True)
    Path(FRESH_MARK).touch(0o600)


def prestart() -> None:
    """Every start of the server (ExecStartPre=+ of ec2hub-singleuser.service): the current secret,
    unless this boot's bootstrap fetched it moments ago for this, the first start (FRESH_MARK)."""
    try:
        os.unlink(FRESH_MARK)
    except FileNotFoundError:
        write_env_file(*instance_facts())
    else:
        log("env", f"{ENV_FILE}: fetched by this boot's bootstrap for the server's first start")


# Each makes the nodes of what the driver found (nvidia-smi: /dev/nvidia0.. and /dev/nvidiactl;
# nvidia-modprobe -u: nvidia-uvm and /dev/nvidia-uvm*, which CUDA needs). The NVIDIA driver's docs:
# "Device Node Verification", for systems without X that create no nodes at boot.
NVIDIA_TOOLS = (["nvidia-smi", "-L"], ["nvidia-modprobe", "-u", "-c", "0"])


def ensure_gpu_devices() -> list[str]:
    """NVIDIA device nodes, where the driver's tools are installed; never fails the start (a CPU
    instance of a GPU image has the tools but no device). Returns the tools that ran."""
    ran = []
    for argv in NVIDIA_TOOLS:
        if not shutil.which(argv[0]):
            continue
        ran.append(argv[0])
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            log("gpu", f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout.strip()[-300:]}")
    nodes = sorted(p.name for p in Path("/dev").glob("nvidia*"))
    if ran:
        log("gpu", f"ran {', '.join(ran)}: /dev has {', '.join(nodes) or 'no nvidia devices'}")
    else:
        log("gpu", "no NVIDIA driver tools (nvidia-smi, nvidia-modprobe): nothing to set up")
    return ran


COMMANDS = {"boot": boot, "prestart": prestart, "gpu": ensure_gpu_devices}


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        die("usage", f"python -m ec2hub_bootstrap.notebook {{{'|'.join(COMMANDS)}}}")
    COMMANDS[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
