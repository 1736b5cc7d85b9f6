"""EdgeBrokerProvider: Mosquitto configuration (password file + ACL) and a local launcher.

One function renders mosquitto.conf for both Kubernetes (the shipped
EdgeBrokerProvider/mosquitto.conf, checked against it by the tests) and local runs, so
the broker the tests use is configured exactly like the deployed one.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeoffload.brokerplugin import LIBRARY_NAME, build_plugin

RESULTS_TOPIC = "edgeoffload/results"
STATUS_TOPIC = "edgeoffload/status"
PREVIEWS_TOPIC = "edgeoffload/previews"   # small retained frames for the live page (edgeoffload.preview)
K8S_CONFIG_DIR = "/mosquitto/config"
K8S_SECRET_DIR = "/mosquitto/secret"
K8S_DATA_DIR = "/mosquitto/data"
K8S_TLS_DIR = "/mosquitto/tls"
K8S_PLUGIN = "/usr/lib/edgeoffload_clientid.so"   # where the Dockerfile's `broker` target puts it
PASSWORD_ITERATIONS = 101  # what mosquitto_passwd uses for its $7$ (PBKDF2-SHA512) hashes

# Who may do what. The preprocessor publishes results, camera previews and its status; the
# webserver only reads; the autoscaler publishes replica counts; `monitor` is a read-only tool account.
ACL = """\
# EdgeBrokerProvider ACL: anything not granted here is denied.
user preprocessor
topic write edgeoffload/results/#
topic write edgeoffload/previews/#
topic readwrite edgeoffload/status/preprocessor

user webserver
topic read edgeoffload/results/#
topic read edgeoffload/previews/#
topic read edgeoffload/status/#

user autoscaler
topic readwrite edgeoffload/status/autoscaler

user monitor
topic read edgeoffload/#
"""
ROLES = ("preprocessor", "webserver", "autoscaler", "monitor")


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Server certificate material: with it the broker's one listener speaks TLS (no plaintext)."""

    cafile: str
    certfile: str
    keyfile: str

    def installed_in(self, directory: Path) -> "TLSFiles":
        """Copies in `directory` (ca.crt, tls.crt, tls.key: a kubernetes.io/tls Secret's names),
        so Mosquitto reads them after dropping to its own user; FileNotFoundError names a missing one."""
        directory.mkdir(parents=True, exist_ok=True)
        copies = []
        for source, name in ((self.cafile, "ca.crt"), (self.certfile, "tls.crt"), (self.keyfile, "tls.key")):
            if not Path(source).is_file():
                raise FileNotFoundError(f"TLS file not found: {source}")
            target = directory / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            copies.append(str(target))
        return TLSFiles(*copies)


def render_config(port: int, password_file: str, acl_file: str, data_dir: str | None, plugin: str,
                  bind: str = "0.0.0.0", tls: TLSFiles | None = None) -> str:
    """mosquitto.conf: one explicit listener (TLS only, when `tls` is given), no anonymous access,
    client ids bound to accounts (edgeoffload.brokerplugin), password file, ACL, bounded queues."""
    lines = [
        "# Rendered by edgeoffload.broker.render_config: keep in sync by regenerating, not by hand.",
        "per_listener_settings false",
        "allow_anonymous false",
        "# Client ids must be the account's name or start with \"<account>-\": no login can take over",
        "# another account's session (edgeoffload/mosquitto_clientid.c). Runs before the password check.",
        f"plugin {plugin}",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        "# A frame record or a camera preview is small; refuse anything that is not (bytes; Mosquitto 2's message_size_limit).",
        "max_packet_size 262144",
        "# Defaults (1000 queued, 20 in flight) silently drop QoS 1 messages for slow subscribers.",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        "max_keepalive 120",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if data_dir:
        lines += ["persistence true", f"persistence_location {data_dir.rstrip('/')}/", "autosave_interval 5"]
    else:
        lines += ["persistence false"]
    lines += ["", f"listener {port} {bind}", "protocol mqtt"]
    if tls:
        lines += [f"cafile {tls.cafile}", f"certfile {tls.certfile}", f"keyfile {tls.keyfile}", "tls_version tlsv1.2"]
    return "\n".join(lines) + "\n"


def k8s_config(tls: bool = True) -> str:
    """The mosquitto.conf shipped in EdgeBrokerProvider/ (paths inside the container): TLS only
    on 8883 with the certificate of Secret broker-tls; `tls=False`: plaintext on 1883 instead."""
    files = TLSFiles(f"{K8S_TLS_DIR}/ca.crt", f"{K8S_TLS_DIR}/tls.crt", f"{K8S_TLS_DIR}/tls.key") if tls else None
    return render_config(8883 if tls else 1883, f"{K8S_SECRET_DIR}/passwd", f"{K8S_CONFIG_DIR}/acl",
                         f"{K8S_DATA_DIR}/", K8S_PLUGIN, tls=files)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password-file hash ($7$: PBKDF2-SHA512), no mosquitto_passwd needed."""
    if not password:
        raise ValueError("MQTT passwords must not be empty")
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_ITERATIONS)
    return f"$7${PASSWORD_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_file_text(users: dict[str, str]) -> str:
    for name in users:
        if not name or ":" in name or any(c.isspace() for c in name):
            raise ValueError(f"invalid MQTT user name {name!r}")
    return "".join(f"{name}:{hash_password(password)}\n" for name, password in users.items())


def generate_users(roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """Fresh random passwords for every role (local runs and tests)."""
    return {role: secrets.token_urlsafe(18) for role in roles}


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


@dataclass
class BrokerProcess:
    """A running Mosquitto; users maps role -> password. restart() keeps port and persistence."""

    host: str
    port: int
    users: dict[str, str]
    workdir: Path
    process: subprocess.Popen | None = None
    tls: TLSFiles | None = None
    _binary: str = field(default="", repr=False)
    owns_workdir: bool = False

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([self._binary, "-c", str(self.workdir / "mosquitto.conf")],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.host, self.port, timeout, self.process, self.log_path)

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_broker(port: int | None = None, host: str = "127.0.0.1", users: dict[str, str] | None = None,
                 workdir: str | Path | None = None, persistence: bool = True,
                 tls: TLSFiles | None = None) -> BrokerProcess:
    """Start a real Mosquitto configured like EdgeBrokerProvider on host:port (free port by default).

    Started as root, Mosquitto drops to user `mosquitto`, so a given `workdir` must be
    reachable by that user; the default (a fresh folder in the temp dir) always is.
    """
    binary = find_mosquitto()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
    from edgeoffload.serve import free_port

    port = port or free_port(host)
    owns_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeoffload-broker-"))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    users = users or generate_users()
    if tls is not None:
        tls = tls.installed_in(workdir / "tls")
    # Mosquitto loads plugins after dropping to its own user: it reads a copy in its folder.
    plugin = workdir / LIBRARY_NAME
    shutil.copyfile(build_plugin(), plugin)
    passwd, acl = workdir / "passwd", workdir / "acl"
    passwd.write_text(password_file_text(users))
    acl.write_text(ACL)
    for path in (passwd, acl):
        path.chmod(0o600)
    _hand_to_broker_user(workdir)
    config = render_config(port, str(passwd), str(acl), str(workdir / "data") if persistence else None,
                           str(plugin), host, tls)
    (workdir / "mosquitto.conf").write_text(config)
    broker = BrokerProcess(host, port, users, workdir, tls=tls, _binary=binary, owns_workdir=owns_workdir)
    broker.start()
    return broker


def _hand_to_broker_user(workdir: Path) -> None:
    """Mosquitto started as root drops to user `mosquitto`; it must still read its files."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        account = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in [workdir, *workdir.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on {host}:{port} within {timeout:.0f}s")


def register(parser: argparse.ArgumentParser) -> None:
    """`edgeoffload broker`: print the shipped config/ACL, make a password file, or run locally."""
    sub = parser.add_subparsers(dest="action", required=True)
    config = sub.add_parser("config", help="print the Kubernetes mosquitto.conf (TLS only, port 8883)")
    config.add_argument("--plaintext", action="store_true", help="plaintext on 1883 instead of TLS (no certificate)")
    sub.add_parser("acl", help="print the ACL file")
    passwd = sub.add_parser("passwd", help="print a password file for USER=PASSWORD pairs")
    passwd.add_argument("pairs", nargs="+", metavar="USER=PASSWORD")
    run_parser = sub.add_parser("run", help="run a local broker until Ctrl-C")
    run_parser.add_argument("--port", type=int, default=1883)
    run_parser.add_argument("--host", default="127.0.0.1")
    add_tls_arguments(run_parser, "")


def add_tls_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    """--PREFIXtls-cert/--PREFIXtls-key/--PREFIXtls-ca: serve MQTT over TLS only."""
    parser.add_argument(f"--{prefix}tls-cert", metavar="PEM", help="server certificate: TLS only, no plaintext listener")
    parser.add_argument(f"--{prefix}tls-key", metavar="PEM", help="its private key")
    parser.add_argument(f"--{prefix}tls-ca", metavar="PEM", help="the CA that signed it (clients verify against it)")


def tls_from(args: argparse.Namespace, prefix: str) -> TLSFiles | None:
    """TLSFiles from the flags of add_tls_arguments; ValueError unless all three or none are given."""
    names = (f"{prefix}tls_ca", f"{prefix}tls_cert", f"{prefix}tls_key")
    given = [getattr(args, name) for name in names]
    if not any(given):
        return None
    if not all(given):
        flags = " ".join(f"--{name.replace('_', '-')}" for name in names)
        raise ValueError(f"TLS needs all of {flags}")
    for path in given:
        if not Path(path).is_file():
            raise ValueError(f"TLS file not found: {path}")
    return TLSFiles(*given)


def run(args: argparse.Namespace) -> int:
    if args.action == "config":
        print(k8s_config(tls=not args.plaintext), end="")
    elif args.action == "acl":
        print(ACL, end="")
    elif args.action == "passwd":
        users = dict(_split_pair(pair) for pair in args.pairs)
        print(password_file_text(users), end="")
    else:
        return run_until_stopped(args.port, args.host, tls_from(args, ""))
    return 0


def run_until_stopped(port: int, host: str, tls: TLSFiles | None = None) -> int:
    """`broker run`: Mosquitto until Ctrl-C or SIGTERM (both stop it: it runs in a session of
    its own, so a signal to this command alone would leave it orphaned)."""
    from edgeoffload.stopsignals import StopOnSignals

    with StopOnSignals("the broker") as stop, start_broker(port, host, tls=tls) as broker:
        print(f"mosquitto on {'mqtts' if tls else 'mqtt'}://{broker.host}:{broker.port}"
              + (" (TLS only)" if tls else ""), flush=True)
        for role, password in broker.users.items():
            print(f"  {role}: {password}", flush=True)
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                print(f"mosquitto exited:\n{broker.log()[-2000:]}", file=sys.stderr)
                return 1
    return 0


def _split_pair(pair: str) -> tuple[str, str]:
    user, sep, password = pair.partition("=")
    if not sep or not user or not password:
        raise ValueError(f"expected USER=PASSWORD, got {pair!r}")
    return user, password
