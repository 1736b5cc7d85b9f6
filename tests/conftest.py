"""Shared fixtures: a real Mosquitto configured exactly like EdgeBrokerProvider."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgeoffload.broker import BrokerProcess, TLSFiles, find_mosquitto, start_broker

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make system-deps` (apt-get install mosquitto)")


@pytest.fixture(scope="module")
def broker() -> BrokerProcess:
    """One broker per test module (random passwords per role in broker.users)."""
    _require_mosquitto()
    with start_broker() as running:
        yield running


@pytest.fixture
def fresh_broker() -> BrokerProcess:
    """A broker of the test's own, for tests that stop or restart it."""
    _require_mosquitto()
    with start_broker() as running:
        yield running


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, logs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates (apt-get install openssl)")
    directory = tmp_path / "certs"
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgeoffload-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    return TLSFiles(str(directory / "ca.crt"), str(directory / "server.crt"), str(directory / "server.key"))
