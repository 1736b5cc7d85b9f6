"""The broker plugin that binds MQTT client ids to accounts, built for the local Mosquitto.

Mosquitto 2 has no rule tying a client id to an account, so any login could disconnect another
account's client by reusing its id. `mosquitto_clientid.c` (shipped in this package) adds that
rule; here it is compiled once per source and compiler into a cache, as the Dockerfile's `broker`
target does for Kubernetes. The rule itself is `client_id_allowed`, which the units also use to
check a configured client id before the broker would refuse it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "mosquitto_clientid.c"
LIBRARY_NAME = "edgeoffload_clientid.so"
HEADER = "mosquitto_plugin.h"
INSTALL_HINT = "Debian/Ubuntu: apt-get install mosquitto-dev libmosquitto-dev gcc"


class PluginBuildError(OSError):
    """The plugin cannot be built here (an environment problem, like a missing broker): the
    message says what to install."""


def client_id_allowed(client_id: str, username: str) -> bool:
    """The plugin's rule: the id is the username, or starts with "<username>-"."""
    return client_id == username or client_id.startswith(f"{username}-")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeoffload" / "mosquitto-plugin"


def build_plugin(directory: Path | None = None) -> Path:
    """The compiled plugin, built on first use; keyed by the source and the compiler, so an edit
    of either rebuilds it. PluginBuildError says what is missing."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise PluginBuildError(f"the broker's client-id plugin needs a C compiler ({INSTALL_HINT})")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    target = (directory or cache_dir()) / key / LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / LIBRARY_NAME
        result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(built), str(SOURCE)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            hint = f" ({INSTALL_HINT})" if HEADER in result.stderr or "mosquitto" in result.stderr else ""
            raise PluginBuildError(f"building the broker's client-id plugin failed{hint}: "
                                   f"{result.stderr.strip()[-600:]}")
        os.replace(built, target)   # atomic: a concurrent build never sees half a library
    return target
