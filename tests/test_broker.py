"""EdgeBrokerProvider: the shipped config is what the code renders, and the real Mosquitto enforces it."""
from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeoffload.broker import ACL, ROLES, BrokerProcess, hash_password, k8s_config, password_file_text
from edgeoffload.brokerplugin import client_id_allowed
from edgeoffload.messaging import MQTTSettings, Publisher, default_client_id
from edgeoffload.serve import free_port

ROOT = Path(__file__).resolve().parent.parent


def connect(broker: BrokerProcess, user: str | None, password: str | None,
            client_id: str | None = None) -> tuple[mqtt.Client, list[str]]:
    """A raw paho client, with an id of `user`'s own unless given; `outcome` gets the CONNACK's reason."""
    client_id = client_id if client_id is not None else default_client_id(user or "anonymous")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        outcome.append(str(reason))
        done.set()

    client.on_connect = on_connect
    client.reconnect_delay_set(30, 60)   # a client that was taken over must stay off, for the assertions
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


def test_no_account_can_take_over_another_accounts_client_id(broker: BrokerProcess) -> None:
    """Mosquitto disconnects a client when its id connects again; the client-id plugin refuses the
    second connection unless the id belongs to the account that logs in."""
    victim_id = default_client_id("preprocessor")
    victim, victim_events = connect(broker, "preprocessor", broker.users["preprocessor"], victim_id)
    assert victim_events == ["Success"]
    for account in ("webserver", "monitor", "autoscaler"):
        _thief, thief_events = connect(broker, account, broker.users[account], victim_id)
        assert thief_events == ["Not authorized"], account
    _thief, thief_events = connect(broker, "webserver", broker.users["webserver"], "preprocessorX-1")
    assert thief_events == ["Not authorized"]   # a prefix must end at a '-'
    time.sleep(0.3)   # a takeover would have disconnected the victim by now
    assert victim_events == ["Success"] and victim.is_connected()
    # The same account may reuse its own id: that is how a restarted replica resumes its session.
    _again, again_events = connect(broker, "preprocessor", broker.users["preprocessor"], victim_id)
    assert again_events == ["Success"]
    deadline = time.monotonic() + 3
    while victim.is_connected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not victim.is_connected()


def test_an_id_of_its_own_still_needs_the_password(broker: BrokerProcess) -> None:
    """The plugin only refuses: an id that fits still goes through the password file."""
    _client, wrong = connect(broker, "webserver", "not-the-password", "webserver-1")
    assert wrong in (["Bad user name or password"], ["Not authorized"])
    _client, bare = connect(broker, "webserver", broker.users["webserver"], "webserver")
    assert bare == ["Success"]
    _client, empty = connect(broker, "webserver", broker.users["webserver"], "")
    assert empty == ["Not authorized"]   # the broker's generated "auto-..." id is nobody's


def test_the_client_id_rule_and_the_settings_that_would_break_it() -> None:
    assert client_id_allowed("preprocessor", "preprocessor")
    assert client_id_allowed("preprocessor-pod-1", "preprocessor")
    assert not client_id_allowed("preprocessorx", "preprocessor")
    assert not client_id_allowed("webserver-1", "preprocessor")
    assert default_client_id("monitor").startswith("monitor-")
    with pytest.raises(ValueError, match="must be 'webserver' or start with 'webserver-'"):
        MQTTSettings(username="webserver", client_id="edgeoffload-webserver-1")


def test_broker_restart_keeps_port_and_credentials(fresh_broker: BrokerProcess) -> None:
    fresh_broker.restart()
    _client, outcome = connect(fresh_broker, "monitor", fresh_broker.users["monitor"])
    assert outcome == ["Success"]


def test_the_tls_config_listens_on_8883_only_with_the_mounted_certificate() -> None:
    config = k8s_config(tls=True)
    assert [line for line in config.splitlines() if line.startswith("listener ")] == ["listener 8883 0.0.0.0"]
    for line in ("cafile /mosquitto/tls/ca.crt", "certfile /mosquitto/tls/tls.crt", "keyfile /mosquitto/tls/tls.key"):
        assert line in config.splitlines()


def _cli(*args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeoffload.cli", "broker", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def test_broker_run_serves_tls_only_when_given_a_certificate(tls_files) -> None:
    port = free_port()
    process = _cli("run", "--port", str(port), "--tls-cert", tls_files.certfile, "--tls-key", tls_files.keyfile,
                   "--tls-ca", tls_files.cafile)
    try:
        assert process.stdout.readline().strip() == f"mosquitto on mqtts://127.0.0.1:{port} (TLS only)"
        users = dict(line.strip().split(": ", 1) for line in (process.stdout.readline() for _ in ROLES))
        over_tls = MQTTSettings(host="127.0.0.1", port=port, username="preprocessor", password=users["preprocessor"],
                                cafile=tls_files.cafile)
        with Publisher(over_tls) as publisher:
            assert publisher.wait_connected(10), publisher.last_error
        plaintext = dataclasses.replace(over_tls, cafile=None, reconnect_min_s=0.5, reconnect_max_s=1)
        with Publisher(plaintext) as refused:
            assert not refused.wait_connected(1.5)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the command stops its broker and exits cleanly
        process.wait(15)
    assert process.returncode == 0


def test_broker_run_names_missing_tls_flags_in_one_line(tls_files) -> None:
    process = _cli("run", "--port", str(free_port()), "--tls-cert", tls_files.certfile)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.strip() == "edgeoffload broker: error: TLS needs all of --tls-ca --tls-cert --tls-key"


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
