"""The local testbed: every unit comes up wired together, and nothing outlives it."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from edgeoffload.load.sample_video import SampleVideoSpec, sample_jpegs
from edgeoffload.local import SiteOptions, Testbed, TestbedOptions
from edgeoffload.messaging import Subscriber
from edgeoffload.records import read_records

# Runs a command module the way edgeoffload.cli does (register + run), without the COMMANDS table.
RUNNER = ("import argparse, importlib, sys; module = importlib.import_module(sys.argv[1]); "
          "parser = argparse.ArgumentParser(); module.register(parser); "
          "sys.exit(module.run(parser.parse_args(sys.argv[2:])))")
FREE_PORTS = ["--port", "0", "--web-port", "0"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _group_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _pids(workdir: Path) -> list[int]:
    return [int(line) for line in (workdir / "pids").read_text().split()]


def test_testbed_wires_every_unit_and_stops_every_process(tmp_path: Path) -> None:
    options = TestbedOptions(edge=SiteOptions(), cloud=SiteOptions(), sync_period_s=1.0, workdir=str(tmp_path))
    testbed = Testbed(options).start()
    try:
        statuses: dict[str, dict] = {}
        watcher = Subscriber(testbed.mqtt_settings("monitor"), topics=("edgeoffload/status/#",),
                             on_status=lambda topic, status: statuses.__setitem__(topic, status)).start()
        assert watcher.wait_subscribed(10)
        frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("astronaut",)))[0]
        answer = requests.post(testbed.preprocessor_url + "/process", params={"camera": "wired", "wait": "1"},
                               data=frame, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200, answer.text
        record = answer.json()
        assert record["status"] == "ok" and record["site"] in ("edge", "cloud")
        assert record["model"].startswith(record["site"] + "/haar-face")
        assert requests.get(testbed.web_url + "/healthz", timeout=5).status_code == 200
        # the committed experiments are browsable beside the testbed's own runs
        listing = requests.get(testbed.web_url + "/experiments", timeout=5).text
        assert "policy_comparison" in listing and "sim_vs_real" in listing
        deadline = time.monotonic() + 10
        while "edgeoffload/status/autoscaler" not in statuses and time.monotonic() < deadline:
            time.sleep(0.1)
        watcher.close()
        pools = statuses["edgeoffload/status/autoscaler"]["pools"]
        # autoscale.yml's minReplicas (cloud: 2), within the local bound of 2
        assert (pools["edge"]["ready"], pools["cloud"]["ready"]) == (1, 2)
        pids = testbed.child_pids()
        assert len(pids) == 6  # broker, 3 inference replicas, preprocessor, webserver
        assert sorted(pids) == sorted(_pids(tmp_path))
    finally:
        testbed.stop()
    assert _wait_gone(pids, timeout=1.0) == []
    testbed.stop()  # idempotent


def test_cloud_requests_cross_the_emulated_wan(tmp_path: Path) -> None:
    from edgeoffload.relay import LinkProfile

    options = TestbedOptions(wan=LinkProfile(delay_s=0.1), policy="cloud-only", autoscale=False, workdir=str(tmp_path))
    with Testbed(options) as testbed:
        frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("chelsea",)))[0]
        answer = requests.post(testbed.preprocessor_url + "/process", params={"camera": "wan", "wait": "1"},
                               data=frame, headers={"Content-Type": "image/jpeg"}, timeout=30).json()
        assert answer["site"] == "cloud"
        assert answer["t_network_ms"] >= 200  # one round trip through a 100 ms one-way link
        assert testbed.relays["cloud"].uplink.bytes >= answer["bytes_sent"]


def test_demo_command_accounts_for_every_frame_and_leaves_no_process(tmp_path: Path) -> None:
    copy = tmp_path / "copy.parquet"
    completed = subprocess.run(
        [sys.executable, "-c", RUNNER, "edgeoffload.demo", "--cameras", "2", "--fps", "2", "--duration", "3",
         "--quiet", "--workdir", str(tmp_path), "--out", str(copy), *FREE_PORTS],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "accounted (1 record each)  12/12" in completed.stdout
    assert "web page: http://127.0.0.1:" in completed.stdout
    experiment = tmp_path / "results" / "demo"
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["frames_sent"] == summary["accounted"] == summary["records"] == 12  # numbers, not text
    assert summary["missing_records"] == 0 and isinstance(summary["wall_time_s"], float)
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"} and summary["replicas"]["edge"]["now"] >= 1
    assert len((experiment / "records.csv").read_text().splitlines()) == 13
    assert list(read_records(copy)) == list(read_records(experiment / "records.csv"))  # --out keeps a copy
    for plot in ("latency_cdf.png", "decisions.png"):
        assert (experiment / plot).read_bytes().startswith(b"\x89PNG")
    pids = _pids(tmp_path)
    assert len(pids) >= 5
    assert _wait_gone(pids, timeout=1.0) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_stops_every_process_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    process = subprocess.Popen([sys.executable, "-c", RUNNER, "edgeoffload.local", "--workdir", str(tmp_path),
                                "--sync-period", "1", *FREE_PORTS],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # type: ignore[union-attr]
            if "testbed running" in line:
                break
        pids = _pids(tmp_path)
        assert len(pids) == 6
        assert all(_group_alive(pid) for pid in pids)
        process.send_signal(sig)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "web page:" in process.stdout.read()  # type: ignore[union-attr]
    assert _wait_gone(pids, timeout=1.0) == []


def test_pool_hpas_come_from_an_autoscale_manifest(tmp_path: Path) -> None:
    from edgeoffload.hpa import HPAError
    from edgeoffload.local import hpa_for

    manifest = tmp_path / "autoscale.yml"
    manifest.write_text("""
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: edge-inference}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: edge-inference}
  minReplicas: 1
  maxReplicas: 6
  metrics:
  - type: Pods
    pods: {metric: {name: edgeoffload_inference_in_flight}, target: {type: AverageValue, averageValue: 1500m}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: preprocessor}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: preprocessor}
  maxReplicas: 1
""")
    options = TestbedOptions(edge=SiteOptions(max_replicas=3), hpa_file=str(manifest), sync_period_s=2.0)
    edge = hpa_for(options, "edge")
    assert (edge.min_replicas, edge.max_replicas, edge.sync_period_s) == (1, 3, 2.0)
    assert edge.metrics[0].name == "edgeoffload_inference_in_flight" and edge.metrics[0].value == 1.5
    with pytest.raises(HPAError, match="cloud inference unit, found 0"):
        hpa_for(options, "cloud")
    default = hpa_for(TestbedOptions(), "cloud")   # the project's autoscale.yml, as on Kubernetes
    assert (default.name, default.min_replicas, default.max_replicas) == ("cloud-inference", 2, 2)
    assert {(m.kind, m.name) for m in default.metrics} == {("Resource", "cpu"), ("Pods", "edgeoffload_inference_in_flight")}
    assert default.kubernetes_version == "1.37"


def test_the_hpa_release_is_an_option() -> None:
    import argparse

    from edgeoffload.local import add_testbed_arguments, hpa_for, options_from

    parser = argparse.ArgumentParser()
    add_testbed_arguments(parser)
    options = options_from(parser.parse_args(["--kubernetes-version", "1.32"]))
    assert options.kubernetes_version == "1.32" and hpa_for(options, "edge").kubernetes_version == "1.32"
    with pytest.raises(SystemExit):   # argparse: invalid choice
        parser.parse_args(["--kubernetes-version", "1.20"])


def test_units_run_with_the_configmaps_settings_and_discover_replicas_like_on_kubernetes(tmp_path: Path) -> None:
    from edgeoffload.unitfolders import unit_settings

    options = TestbedOptions(edge=SiteOptions(replicas=2), autoscale=False, workdir=str(tmp_path))
    with Testbed(options) as testbed:
        shipped = unit_settings("edge-inference").env
        pool = testbed.pools["edge"]
        assert {k: pool.env[k] for k in shipped if k != "INFER_SITE"} == {k: v for k, v in shipped.items() if k != "INFER_SITE"}
        assert "KEEPALIVE" not in pool.env                     # gunicorn's keep-alive, as shipped
        state = requests.get(testbed.preprocessor_url + "/api/state", timeout=5).json()
        per_replica = int(unit_settings("preprocessor").env["PRE_EDGE_REPLICA_CONCURRENCY"])
        assert state["edge"]["discovery"]["source"] == "kubernetes" and state["edge"]["replicas"] == 2
        assert state["edge"]["concurrency"] == 2 * per_replica
        assert sorted(b["name"] for b in state["edge"]["backends"]) == ["edge-inference-1", "edge-inference-2"]


def _post_frame(testbed: Testbed, camera: str, frame: bytes) -> requests.Response:
    return requests.post(testbed.preprocessor_url + "/process", params={"camera": camera, "wait": "1"},
                         data=frame, headers={"Content-Type": "image/jpeg"}, timeout=30)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_testbed_restarts_what_dies_and_reports_each_restart(tmp_path: Path, caplog) -> None:
    """Issue 16: a killed broker, preprocessor or replica used to stay dead."""
    caplog.set_level(logging.WARNING)
    options = TestbedOptions(autoscale=False, workdir=str(tmp_path))
    frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("astronaut",)))[0]
    with Testbed(options) as testbed:
        statuses: list[dict] = []
        watcher = Subscriber(testbed.mqtt_settings("monitor"), topics=("edgeoffload/status/autoscaler",),
                             on_status=lambda _topic, status: statuses.append(status)).start()
        try:
            assert watcher.wait_subscribed(10)
            broker_pid, preprocessor_pid = testbed.broker.process.pid, testbed.preprocessor.process.pid
            edge = testbed.pools["edge"]
            victim = edge.replicas[0]
            for pid in (broker_pid, preprocessor_pid, victim.pid):
                os.killpg(pid, signal.SIGKILL)
            _wait_for(lambda: testbed.restarts["broker"] == 1 and testbed.restarts["preprocessor"] == 1
                      and edge.restarts == 1 and edge.size == 1, 90, "the restarts")
            assert testbed.broker.process.pid != broker_pid and testbed.preprocessor.process.pid != preprocessor_pid
            assert [r.name for r in edge.replicas] != [victim.name]  # a new pod, not the old one back
            _wait_for(lambda: requests.get(testbed.preprocessor_url + "/v2/health/ready", timeout=5).ok, 60,
                      "the restarted preprocessor to be ready")
            answer = _post_frame(testbed, "after-restarts", frame)
            assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
            _wait_for(lambda: any(s.get("restarts", {}).get("edge-inference") == 1
                                  and s["restarts"].get("broker") == 1 for s in statuses), 20, "the retained status")
            rows = dict(testbed.scaling_rows())
            assert "broker 1" in rows["restarts"] and "preprocessor 1" in rows["restarts"]
            assert "edge-inference 1" in rows["restarts"] and "webserver 0" in rows["restarts"]
            logged = caplog.text
            assert "broker restarted (restart 1)" in logged and "preprocessor restarted (restart 1)" in logged
            assert f"replica {victim.name} exited with -9" in logged
        finally:
            watcher.close()
    assert not _wait_gone(_pids(tmp_path))


def test_the_testbed_runs_its_broker_over_tls_only(tmp_path: Path, tls_files) -> None:
    options = TestbedOptions(autoscale=False, broker_tls=tls_files, workdir=str(tmp_path))
    frame = sample_jpegs(SampleVideoSpec(frames_per_scene=1, scenes=("astronaut",)))[0]
    with Testbed(options) as testbed:
        answer = _post_frame(testbed, "tls", frame)  # 200 only once the broker acknowledged the record
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
        _wait_for(lambda: requests.get(testbed.web_url + "/healthz", timeout=5).json()["mqtt"]["connected"], 20,
                  "the webserver's TLS connection")
        assert f"mqtts://{testbed.broker.host}:{testbed.broker.port}" in testbed.describe()
        assert f"--mqtt-cafile {Path(tls_files.cafile).resolve()}" in testbed.describe()
        plaintext = dataclasses.replace(testbed.mqtt_settings("monitor"), cafile=None)
        with Subscriber(plaintext) as refused:
            assert not refused.wait_subscribed(2)
