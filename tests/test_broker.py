"""EdgeBrokerProvider: the shipped config is what the code renders, and the real Mosquitto enforces it."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeoffload.broker import ACL, BrokerProcess, hash_password, k8s_config, password_file_text

ROOT = Path(__file__).resolve().parent.parent


def connect(broker: BrokerProcess, user: str | None, password: str | None) -> tuple[mqtt.Client, list[str]]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        outcome.append(str(reason))
        done.set()

    client.on_connect = on_connect
    if user is not None:
        client.username_pw_set(user, password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert done.wait(5), "no CONNACK from broker"
    return client, outcome


def collect(broker: BrokerProcess, user: str, topic: str) -> tuple[mqtt.Client, list[bytes], list[object]]:
    client, outcome = connect(broker, user, broker.users[user])
    assert outcome == ["Success"]
    received: list[bytes] = []
    granted: list[object] = []
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, message: received.append(message.payload)

    def on_subscribe(_c, _u, _mid, reason_codes, _p):  # type: ignore[no-untyped-def]
        granted.extend(reason_codes)
        subscribed.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topic, qos=1)
    assert subscribed.wait(5)
    return client, received, granted


def test_shipped_files_are_what_the_code_renders() -> None:
    assert (ROOT / "EdgeBrokerProvider" / "mosquitto.conf").read_text() == k8s_config()
    assert (ROOT / "EdgeBrokerProvider" / "acl").read_text() == ACL
    assert "allow_anonymous false" in k8s_config()


def test_password_hashes_are_salted_pbkdf2() -> None:
    first, second = hash_password("secret"), hash_password("secret")
    assert first.startswith("$7$101$") and first != second
    assert password_file_text({"a": "x"}).startswith("a:$7$")
    with pytest.raises(ValueError):
        password_file_text({"bad name": "x"})
    with pytest.raises(ValueError):
        hash_password("")


def test_anonymous_and_wrong_password_are_refused(broker: BrokerProcess) -> None:
    _client, anonymous = connect(broker, None, None)
    assert anonymous == ["Not authorized"]
    _client, wrong = connect(broker, "webserver", "not-the-password")
    assert wrong in (["Bad user name or password"], ["Not authorized"])


def test_acl_lets_the_preprocessor_publish_and_the_webserver_only_read(broker: BrokerProcess) -> None:
    reader, received, granted = collect(broker, "webserver", "edgeoffload/results/#")
    assert [int(code.value) for code in granted] == [1]  # type: ignore[attr-defined]
    publisher, _ = connect(broker, "preprocessor", broker.users["preprocessor"])
    publisher.publish("edgeoffload/results/cam1", b"from-preprocessor", qos=1).wait_for_publish(5)
    reader.publish("edgeoffload/results/cam1", b"from-webserver", qos=1)
    deadline = time.monotonic() + 3
    while b"from-preprocessor" not in received and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a forbidden publish would arrive within this time
    assert received == [b"from-preprocessor"]


def test_preprocessor_cannot_read_results(broker: BrokerProcess) -> None:
    spy, received, granted = collect(broker, "preprocessor", "edgeoffload/results/#")
    publisher, _ = connect(broker, "preprocessor", broker.users["preprocessor"])
    publisher.publish("edgeoffload/results/cam9", b"secret", qos=1).wait_for_publish(5)
    time.sleep(0.5)
    assert received == []
    spy.disconnect()


def test_broker_restart_keeps_port_and_credentials(fresh_broker: BrokerProcess) -> None:
    fresh_broker.restart()
    _client, outcome = connect(fresh_broker, "monitor", fresh_broker.users["monitor"])
    assert outcome == ["Success"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_run_stops_mosquitto_on_a_signal(sig: signal.Signals) -> None:
    """Mosquitto runs in a session of its own: `broker run` must stop it on SIGTERM too."""
    from edgeoffload.serve import free_port

    port = free_port()
    command = subprocess.Popen([sys.executable, "-m", "edgeoffload.cli", "broker", "run", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert command.stdout is not None and command.stdout.readline().startswith(f"mosquitto on mqtt://127.0.0.1:{port}")
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        command.send_signal(sig)
        assert command.wait(20) == 0
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return  # nothing listens any more: mosquitto is gone
        time.sleep(0.1)
    pytest.fail(f"mosquitto still listens on {port} after {sig.name} to `broker run`")
