#!/bin/bash
# ec2hub notebook instance bootstrap: the EC2 user data of every notebook launch template.
#
# Identical for every user and server: infra puts these exact bytes in each launch template.
# Nothing is templated in. Runs as root at first boot (cloud-init); safe to run again on a
# restarted instance: every step is an idempotent ensure_* that says what it found or did.
#
# Inputs (nothing else):
#   IMDSv2 http://169.254.169.254     instance id, region, and the instance's tags (launch templates
#                                     enable instance metadata tags; docs/ARCHITECTURE.md §3):
#     ec2hub:user           JupyterHub user name (any unicode): becomes a safe unix user name
#     ec2hub:server         server name ("" = default server), logged only
#     ec2hub:hub            hub id, logged only
#     ec2hub:class          instance class slug, logged only
#     ec2hub:secret-prefix  SSM prefix; this server's env is the SecureString <prefix><instance-id>
#     ec2hub:efs            EFS file system id; absent = home on the instance's own disk
#   SSM SecureString <prefix><instance-id>   JSON object of environment variables for
#                                     jupyterhub-singleuser (JUPYTERHUB_API_TOKEN, ...), written by
#                                     the spawner just after launch, so it is fetched with backoff
#                                     (botocore standard retries; credentials from the instance role;
#                                     endpoint from botocore's normal configuration).
#
# Outputs:
#   unix user jupyter-<slug>          derived from ec2hub:user (see unix_name() below)
#   /mnt/efs, /home/<unix-name>       EFS mounted, home = /mnt/efs/home/<unix-name> bound on it
#                                     (with systemd also in /etc/fstab, for reboots: user data
#                                     runs only at an instance's first boot)
#   /opt/ec2hub/venv                  jupyterhub-singleuser (kept if the AMI has it)
#   /etc/ec2hub/singleuser.env        the server's env, root 0600
#   ec2hub-singleuser.service         hardened systemd unit; without systemd as PID 1 (a container,
#                                     the local sandbox) the same command runs in the foreground
#   console output                    one line per step, prefixed "ec2hub-notebook: <step>:";
#                                     no secret is ever printed
#
# OS assumptions: Linux with bash, coreutils, util-linux (mount, setpriv), shadow-utils (useradd);
# Amazon Linux 2023 or Debian/Ubuntu for installing Python and NFS when the AMI lacks them.
#
# Security: tag values are data, never code. The shell part below reads no tag; tags are read and
# checked by the embedded Python launcher and passed to commands as argv, never through a shell.
set -euo pipefail
umask 022

readonly VENV=/opt/ec2hub/venv
readonly LAUNCHER=/opt/ec2hub/bin/ec2hub-notebook-launch.py
# Pinned to match the hub (requirements.txt of the repository).
readonly PACKAGES=(jupyterhub==6.1.1 jupyterlab==4.6.6 jupyter_server==2.21.1 boto3==1.44.8)

log() { printf 'ec2hub-notebook: %s: %s\n' "$1" "$2"; }
die() { log "$1" "ERROR: $2" >&2; exit 1; }

# A Python >= 3.10 for the venv: the AMI's, else the distribution's python3.11.
find_python() {
  local candidate
  for candidate in python3.12 python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

ensure_python() {
  if PYTHON=$(find_python); then
    log python "using $PYTHON"
    return
  fi
  log python "no Python >= 3.10 on the AMI; installing python3.11"
  if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q python3.11 python3.11-pip
  elif command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
  fi
  PYTHON=$(find_python) || die python "no Python >= 3.10 and none could be installed: use an AMI with python3.11"
}

# jupyterhub-singleuser and boto3 in /opt/ec2hub/venv: kept when present (a baked AMI), else made.
ensure_venv() {
  if [[ -x $VENV/bin/jupyterhub-singleuser ]] && "$VENV/bin/python" -c 'import boto3' 2>/dev/null; then
    log venv "$VENV has jupyterhub-singleuser and boto3"
    return
  fi
  ensure_python
  log venv "creating $VENV with ${PACKAGES[*]}"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${PACKAGES[@]}" ||
    die venv "pip install failed: the instance needs a route to PyPI (NAT or a mirror) or a baked AMI with $VENV"
  log venv "installed"
}

# The launcher does every step that touches a tag value. Quoted heredoc: nothing expands.
ensure_launcher() {
  mkdir -p "$(dirname "$LAUNCHER")"
  cat >"$LAUNCHER.tmp" <<'EC2HUB_LAUNCHER'
"""ec2hub notebook launcher: tags and secret -> unix user, home, env file, jupyterhub-singleuser.

Written by the notebook user data (bootstrap/notebook/user-data.sh), which is the source of truth.
Standard library plus boto3. Every value from a tag or the secret is passed to commands as argv or
written to files by Python; none reaches a shell.
"""

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

IMDS = "http://169.254.169.254"
VENV = "/opt/ec2hub/venv"
ETC = "/etc/ec2hub"
ENV_FILE = ETC + "/singleuser.env"
EFS_MOUNT = "/mnt/efs"
UNIT_NAME = "ec2hub-singleuser.service"
UNIT_PATH = "/etc/systemd/system/" + UNIT_NAME
PORT = 8888
UNIX_PREFIX = "jupyter-"
UNIX_MAX = 32
SECRET_WAIT_S = 900
IMDS_WAIT_S = 300
INSTANCE_OWNED_ENV = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PYTHONPATH", "PYTHONHOME"}


def log(step, message):
    print(f"ec2hub-notebook: {step}: {message}", flush=True)


def die(step, message):
    print(f"ec2hub-notebook: {step}: ERROR: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def shown(value):
    """A tag value made safe for a one-line console log (escapes newlines, controls, unicode)."""
    return ascii(value)


# --- IMDSv2 ---------------------------------------------------------------------------------------
class Imds:
    def __init__(self):
        self.token = None

    def _token(self):
        request = urllib.request.Request(
            IMDS + "/latest/api/token", method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
        )
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.read().decode()

    def wait(self):
        deadline = time.monotonic() + IMDS_WAIT_S
        delay = 0.2
        while True:
            try:
                self.token = self._token()
                return
            except (OSError, urllib.error.URLError) as exc:
                if time.monotonic() > deadline:
                    die("imds", f"no IMDSv2 at {IMDS} after {IMDS_WAIT_S}s ({exc})")
                time.sleep(delay)
                delay = min(delay * 2, 5)

    def get(self, path, missing_ok=False):
        request = urllib.request.Request(
            f"{IMDS}/latest/{path}", headers={"X-aws-ec2-metadata-token": self.token}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            if exc.code == 401:  # token expired: get a new one once
                self.token = self._token()
                return self.get(path, missing_ok)
            raise


def read_tags(imds):
    keys = imds.get("meta-data/tags/instance", missing_ok=True)
    if keys is None:
        die("tags", "instance metadata tags are off: the launch template needs "
            "MetadataOptions.InstanceMetadataTags=enabled")
    tags = {}
    for key in keys.splitlines():
        if key.startswith("ec2hub:"):
            tags[key] = imds.get("meta-data/tags/instance/" + urllib.parse.quote(key, safe=":"))
    for required in ("ec2hub:user", "ec2hub:secret-prefix"):
        if not tags.get(required):
            die("tags", f"tag {required} is missing: the spawner sets it at launch")
    return tags


# --- names ----------------------------------------------------------------------------------------
def unix_name(hub_user):
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


def run(step, argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        die(step, f"{argv[0]} failed ({proc.returncode}): {proc.stdout.strip()}")
    return proc.stdout


# --- steps ----------------------------------------------------------------------------------------
def ensure_user(name):
    try:
        entry = pwd.getpwnam(name)
        log("user", f"{name} exists (uid {entry.pw_uid})")
        return entry
    except KeyError:
        pass
    argv = ["useradd", "--user-group", "--shell", "/bin/bash", "--home-dir", "/home/" + name, "--no-create-home"]
    uid = stable_uid(name)
    if uid is not None:
        argv += ["--uid", str(uid)]
    run("user", argv + [name])
    entry = pwd.getpwnam(name)
    log("user", f"created {name} (uid {entry.pw_uid})")
    return entry


def stable_uid(name):
    """The uid that owns this user's EFS home already, else one derived from the name.

    The same hub user gets the same uid on every instance, so files on EFS stay theirs.
    """
    home = f"{EFS_MOUNT}/home/{name}"
    try:
        uid = os.stat(home).st_uid
    except FileNotFoundError:
        uid = 200000 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 800000
    if uid < 1000:
        return None
    try:
        pwd.getpwuid(uid)
        return None  # taken on this instance: let useradd choose
    except KeyError:
        return uid


def ensure_efs(efs_id, region):
    if not efs_id:
        log("efs", "no ec2hub:efs tag: the home directory is on this instance's disk and is lost when it terminates")
        return False
    if not re.fullmatch(r"fs-[0-9a-f]{8,40}", efs_id):
        die("efs", f"tag ec2hub:efs {shown(efs_id)} is not an EFS file system id (fs-...)")
    if os.path.ismount(EFS_MOUNT):
        log("efs", f"{EFS_MOUNT} is already mounted")
        return True
    os.makedirs(EFS_MOUNT, exist_ok=True)
    if not shutil.which("mount.efs") and not shutil.which("mount.nfs4"):
        install_efs_client()
    if shutil.which("mount.efs"):  # amazon-efs-utils: TLS in transit, IAM auth
        source, fstype, options = f"{efs_id}:/", "efs", "tls,iam"
        how = "amazon-efs-utils, TLS"
    else:
        # The NFS options AWS recommends for EFS (docs: "Mounting EFS file systems using NFS").
        source, fstype = f"{efs_id}.efs.{region}.amazonaws.com:/", "nfs4"
        options = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
        how = "nfs4 without TLS: install amazon-efs-utils for TLS"
    run("efs", ["mount", "-t", fstype, "-o", options, source, EFS_MOUNT])
    # With systemd, a rebooted instance mounts it again before the server starts (user data runs
    # only at first boot there).
    ensure_fstab_line(f"{source} {EFS_MOUNT} {fstype} _netdev,{options} 0 0")
    log("efs", f"mounted {source} at {EFS_MOUNT} ({how})")
    return True


def install_efs_client():
    if shutil.which("dnf"):
        argv = ["dnf", "install", "-y", "-q", "amazon-efs-utils"]
    elif shutil.which("apt-get"):
        argv = ["apt-get", "install", "-y", "-q", "nfs-common"]
    else:
        die("efs", "no mount.efs or mount.nfs4 and no package manager: bake amazon-efs-utils into the AMI")
    log("efs", f"installing the EFS client: {' '.join(argv)}")
    run("efs", argv)


def ensure_fstab_line(line):
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


def ensure_home(user, on_efs):
    home = user.pw_dir
    if on_efs:
        source = f"{EFS_MOUNT}/home/{user.pw_name}"
        os.makedirs(f"{EFS_MOUNT}/home", mode=0o755, exist_ok=True)
        created = ensure_dir(source, user)
        ensure_dir(home, None)
        if os.path.ismount(home):
            log("home", f"{home} is bound to {source}")
        else:
            run("home", ["mount", "--bind", source, home])
            ensure_fstab_line(f"{source} {home} none bind,x-systemd.requires-mounts-for={EFS_MOUNT} 0 0")
            log("home", f"bound {source} ({'new' if created else 'kept'}) on {home}")
    else:
        created = ensure_dir(home, user)
        log("home", f"{home} ({'created' if created else 'exists'}, local disk)")
    return home


def ensure_dir(path, owner):
    created = not os.path.isdir(path)
    if created:
        os.makedirs(path, mode=0o700 if owner else 0o755)
    if owner and created:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return created


def fetch_secret(region, name):
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


def env_file_text(env):
    """systemd EnvironmentFile syntax: double-quoted, with \\ " ` $ escaped (no expansion)."""
    lines = ["# ec2hub: jupyterhub-singleuser environment, from this server's SSM SecureString"]
    for key in sorted(env):
        value = re.sub(r'([\\"`$])', r"\\\1", env[key])
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def parse_env_file(text):
    """Read back what env_file_text wrote, without a shell."""
    env = {}
    for match in re.finditer(r'^([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"$', text, re.M | re.S):
        env[match.group(1)] = re.sub(r"\\(.)", r"\1", match.group(2), flags=re.S)
    return env


def write_if_changed(path, text, mode):
    """Write atomically with ``mode`` from the start; return True if the content changed."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                os.chmod(path, mode)
                os.chown(path, 0, 0)
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.chown(tmp, 0, 0)
    os.replace(tmp, path)
    return True


def ensure_env_file(env):
    os.makedirs(ETC, mode=0o755, exist_ok=True)
    changed = write_if_changed(ENV_FILE, env_file_text(env), 0o600)
    log("env", f"{ENV_FILE} {'written' if changed else 'unchanged'} (root, 0600)")
    return changed


def unit_text(user, home):
    return f"""\
# ec2hub: the user's Jupyter server, started by the notebook user data (bootstrap/notebook).
[Unit]
Description=ec2hub Jupyter server for {user.pw_name}
Wants=network-online.target
After=network-online.target remote-fs.target
# The home (an EFS bind mount after a reboot, from /etc/fstab) must be there first.
RequiresMountsFor={home}

[Service]
Type=simple
User={user.pw_name}
Group={user.pw_gid}
WorkingDirectory={home}
# The API token and the hub's URLs: root 0600, read by systemd before it drops privileges.
EnvironmentFile={ENV_FILE}
Environment=PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin
ExecStart={VENV}/bin/jupyterhub-singleuser --ip=0.0.0.0 --port={PORT}
Restart=on-failure
RestartSec=5

# Hardening (systemd.exec(5)): the server writes only to the home directory and its own /tmp.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={home}
ProtectHome=no
PrivateTmp=yes
# No PrivateDevices=: it would hide the GPU (/dev/nvidia*) and CUDA would find no device. Only
# these devices, besides the pseudo-devices DevicePolicy=closed keeps (null, zero, random, tty):
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
ProtectProc=invisible
PrivateMounts=yes
RemoveIPC=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def systemd_is_pid1():
    # sd_booted(3): systemd is PID 1 exactly when this directory exists.
    return os.path.isdir("/run/systemd/system")


def ensure_service(user, home, env_changed):
    if not systemd_is_pid1():
        return False
    changed = write_if_changed(UNIT_PATH, unit_text(user, home), 0o644)
    if changed:
        run("service", ["systemctl", "daemon-reload"])
    run("service", ["systemctl", "enable", UNIT_NAME])
    if changed or env_changed:
        run("service", ["systemctl", "restart", UNIT_NAME])
        log("service", f"{UNIT_NAME} (re)started")
    else:
        run("service", ["systemctl", "start", UNIT_NAME])
        log("service", f"{UNIT_NAME} running, unchanged")
    return True


def exec_foreground(user, home):
    """No systemd: run the unit's command here, as the user, with the env file (never a shell)."""
    with open(ENV_FILE, encoding="utf-8") as f:
        env = parse_env_file(f.read())
    env.update(
        HOME=home, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell or "/bin/bash",
        PATH=f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", LANG=os.environ.get("LANG", "C.UTF-8"),
    )
    argv = [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "--no-new-privs", "--",
        f"{VENV}/bin/jupyterhub-singleuser", "--ip=0.0.0.0", f"--port={PORT}",
    ]
    log("service", f"no systemd (PID 1 is not systemd): running jupyterhub-singleuser as {user.pw_name} in the foreground")
    os.chdir(home)
    os.umask(0o077)
    os.execvpe(argv[0], argv, env)


def main():
    imds = Imds()
    imds.wait()
    instance_id = imds.get("meta-data/instance-id")
    region = imds.get("meta-data/placement/region")
    if not re.fullmatch(r"i-[0-9a-f]{8,40}", instance_id) or not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
        die("imds", f"unexpected instance id {shown(instance_id)} or region {shown(region)}")
    log("imds", f"instance {instance_id} in {region}")

    tags = read_tags(imds)
    prefix = tags["ec2hub:secret-prefix"]
    if not re.fullmatch(r"/[A-Za-z0-9_./-]+/", prefix):
        die("tags", f"ec2hub:secret-prefix {shown(prefix)} is not an SSM path prefix (/.../)")
    name = unix_name(tags["ec2hub:user"])
    log("tags", f"hub {shown(tags.get('ec2hub:hub', ''))} user {shown(tags['ec2hub:user'])} "
        f"server {shown(tags.get('ec2hub:server', ''))} class {shown(tags.get('ec2hub:class', ''))} "
        f"-> unix user {name}")

    on_efs = ensure_efs(tags.get("ec2hub:efs"), region)
    user = ensure_user(name)
    home = ensure_home(user, on_efs)
    env = fetch_secret(region, prefix + instance_id)
    env_changed = ensure_env_file(env)
    if not ensure_service(user, home, env_changed):
        exec_foreground(user, home)
    log("done", f"jupyterhub-singleuser for {name} on port {PORT}")


if __name__ == "__main__":
    main()
EC2HUB_LAUNCHER
  chmod 0755 "$LAUNCHER.tmp"
  mv -f "$LAUNCHER.tmp" "$LAUNCHER"
  log launcher "$LAUNCHER written"
}

main() {
  log start "ec2hub notebook bootstrap"
  ensure_venv
  ensure_launcher
  # HOME for botocore's ~/.aws/config; cloud-init may leave it unset.
  export HOME=/root
  exec "$VENV/bin/python" "$LAUNCHER"
}

main "$@"
