"""End to end in a real browser: Mosquitto -> webserver under gunicorn -> headless Chromium.

Records are published with the preprocessor's credentials (as the real preprocessor does);
the page must show them live over Server-Sent Events, and a camera name that is an HTML
injection attempt must appear as plain text.
"""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from edgeoffload.broker import BrokerProcess
from edgeoffload.messaging import MQTTSettings, Publisher
from edgeoffload.records import Detection, FrameRecord
from edgeoffload.serve import UnitProcess, start_unit

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS_CAMERA = "<img src=x onerror=\"document.title='pwned';alert(1)\">"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed "
                                "(apt-get install chromium chromium-driver)")

# What the page shows, read through the DOM's text (never through innerHTML).
READ_PAGE = """
const tiles = {};
for (const tile of document.querySelectorAll('.tile')) {
  const stats = {};
  for (const v of tile.querySelectorAll('[data-stat]')) stats[v.dataset.stat] = v.textContent;
  tiles[tile.querySelector('.tile-name').textContent] = {
    stats, badge: tile.querySelector('.badge').textContent, foot: tile.querySelector('.tile-foot').textContent};
}
const text = (id) => document.getElementById(id).textContent;
// pixels of the replica chart in the edge and cloud colours (lines drawn, not just axes)
const chart = document.getElementById('replica-chart');
const copy = document.createElement('canvas');
copy.width = chart.width; copy.height = chart.height;
const reader = copy.getContext('2d', {willReadFrequently: true});   // read a copy: the page's canvas stays as it is
reader.drawImage(chart, 0, 0);
const pixels = reader.getImageData(0, 0, copy.width, copy.height).data;
const near = (i, [r, g, b]) => Math.abs(pixels[i] - r) + Math.abs(pixels[i + 1] - g) + Math.abs(pixels[i + 2] - b) < 30;
let edgeInk = 0, cloudInk = 0;
for (let i = 0; i < pixels.length; i += 4) {
  if (pixels[i + 3] > 200 && near(i, [15, 148, 136])) edgeInk += 1;
  if (pixels[i + 3] > 200 && near(i, [91, 91, 214])) cloudInk += 1;
}
return {tiles, edgeInk, cloudInk, title: document.title, images: document.querySelectorAll('img').length,
        stream: text('stream-state'), mqtt: text('mqtt-state'), fps: text('kpi-fps'),
        frames: text('kpi-frames'), edge: text('kpi-edge'), p95: text('kpi-p95'), replicas: text('replicas'),
        units: text('units')};
"""


def wait_for(read: Callable[[], Any], accept: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(0.1)
        value = read()
    return value


def health(unit: UnitProcess) -> dict[str, Any]:
    with urllib.request.urlopen(unit.url + "/healthz", timeout=5) as response:
        return json.load(response)


@pytest.fixture
def webserver(broker: BrokerProcess, tmp_path: Path) -> Iterator[UnitProcess]:
    env = {"WEB_MQTT_HOST": broker.host, "WEB_MQTT_PORT": str(broker.port), "WEB_MQTT_USERNAME": "webserver",
           "WEB_MQTT_PASSWORD": broker.users["webserver"], "WEB_RESULTS_DIR": str(tmp_path / "results")}
    with start_unit("webserver", env=env, workers=1, threads=8, log_dir=tmp_path) as unit:
        wait_for(lambda: health(unit)["mqtt"]["connected"], bool)
        yield unit


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-quic", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1440,1200", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def publisher(broker: BrokerProcess, role: str) -> Publisher:
    settings = MQTTSettings(host=broker.host, port=broker.port, username=role, password=broker.users[role],
                            session_expiry_s=0)
    client = Publisher(settings, unit=role).start()
    assert client.wait_connected(10), client.last_error
    return client


def frame(camera: str, frame_id: int) -> FrameRecord:
    site = "edge" if frame_id % 3 else "cloud"
    dropped = frame_id % 10 == 4
    person = Detection("person", 0.91, (80 + 4 * frame_id, 120, 140, 300))
    car = Detection("car", 0.77, (700, 380, 320, 180))
    return FrameRecord(camera=camera, frame_id=frame_id, captured_at=time.time(),
                       site="none" if dropped else site, status="dropped" if dropped else "ok",
                       reason="queue full" if dropped else "", policy="min-latency", model="yolov3-tiny",
                       detections=() if dropped else (person, car), bytes_sent=48_000,
                       t_total_ms=0.0 if dropped else 30.0 + frame_id % 7 * (9 if site == "cloud" else 3),
                       replica="" if dropped else f"{site}-inference-{1 + frame_id % 2 if site == 'edge' else 1}")


def test_live_page_updates_and_shows_hostile_names_as_text(broker: BrokerProcess, webserver: UnitProcess,
                                                           browser: webdriver.Chrome, artifacts_dir: Path) -> None:
    started = time.monotonic()
    browser.get(webserver.url + "/")
    read = lambda: browser.execute_script(READ_PAGE)  # noqa: E731
    wait_for(read, lambda page: page["stream"] == "Live" and page["mqtt"] == "MQTT connected")

    records = publisher(broker, "preprocessor")
    autoscaler = publisher(broker, "autoscaler")
    try:
        autoscaler.publish_status({"replicas": {"edge-inference": 2, "cloud-inference": 3}})
        for frame_id in range(20):
            records.publish_record(frame("entrance", frame_id))
        for frame_id in range(5):
            records.publish_record(frame(XSS_CAMERA, frame_id))
        assert records.flush(10) and autoscaler.flush(10)

        page = wait_for(read, lambda p: p["tiles"].get("entrance", {}).get("stats", {}).get("frames") == "20"
                        and p["tiles"].get(XSS_CAMERA, {}).get("stats", {}).get("frames") == "5"
                        and "edge-inference" in p["replicas"])
        assert page["title"] == "Live results · edgeoffload" and page["images"] == 0
        assert page["frames"] == "25 frames" and page["fps"] != "–" and page["p95"].endswith(" ms")
        assert page["replicas"] == "cloud-inference3edge-inference2" and page["units"] == "autoscalerreporting"
        # replicas per site over time: the serving lines (records) and the autoscaler's (dashed)
        page = wait_for(read, lambda p: p["edgeInk"] > 50 and p["cloudInk"] > 50)
        summary = json.load(urllib.request.urlopen(webserver.url + "/api/summary", timeout=5))
        assert summary["timeline"][-1]["serving"] == {"edge": 2, "cloud": 1}
        assert summary["timeline"][-1]["scaled"] == {"edge-inference": 2, "cloud-inference": 3}
        assert page["tiles"]["entrance"]["foot"].startswith("frame #19 · min-latency · yolov3-tiny")

        for frame_id in range(20, 30):  # later records, over a second or two, update the same tile
            records.publish_record(frame("entrance", frame_id))
            time.sleep(0.15)
        assert records.flush(10)
        page = wait_for(read, lambda p: p["tiles"]["entrance"]["stats"]["frames"] == "30")
        assert page["tiles"]["entrance"]["foot"].startswith("frame #29")
        assert page["frames"] == "35 frames"
    finally:
        records.close()
        autoscaler.close()

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - the onerror payload must never run
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert console_problems(browser) == []
    browser.save_screenshot(str(artifacts_dir / "webserver.png"))
    print(f"browser test took {time.monotonic() - started:.1f}s")


def console_problems(browser: webdriver.Chrome) -> list[str]:
    """Errors the page caused, e.g. a Content-Security-Policy violation or a script exception."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def write_experiment(results_dir: Path) -> None:
    folder = results_dir / "policy-sweep"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "scenario": "two-sites-wan-20mbit", "cameras": 4, "seconds": 300,
        "policies": {"edge-only": {"p50_ms": 61.2, "p95_ms": 140.8, "drop_rate": 0.031, "cost_usd": 0.0},
                     "cloud-only": {"p50_ms": 88.0, "p95_ms": 190.4, "drop_rate": 0.0, "cost_usd": 0.42},
                     "min-latency": {"p50_ms": 44.9, "p95_ms": 97.3, "drop_rate": 0.002, "cost_usd": 0.17}}}))
    (folder / "replicas.csv").write_text("second,edge-inference,cloud-inference\n0,1,1\n60,2,1\n120,2,3\n")
    plot = np.full((300, 600, 3), 255, np.uint8)
    points = np.array([[40 + 5 * i, 250 - int(90 + 60 * np.sin(i / 9))] for i in range(105)], np.int32)
    cv2.polylines(plot, [points], False, (136, 148, 15), 2, cv2.LINE_AA)
    cv2.line(plot, (40, 260), (570, 260), (150, 150, 150), 1)
    ok, png = cv2.imencode(".png", plot)
    assert ok
    (folder / "latency.png").write_bytes(png.tobytes())


def test_experiment_page_renders_tables_and_plots(webserver: UnitProcess, browser: webdriver.Chrome,
                                                  artifacts_dir: Path, tmp_path: Path) -> None:
    write_experiment(tmp_path / "results")  # the webserver fixture serves tmp_path / "results"
    browser.get(webserver.url + "/experiments")
    browser.find_element(By.LINK_TEXT, "policy-sweep").click()
    page = wait_for(lambda: browser.execute_script("""
        const img = document.querySelector('figure img');
        return {heading: document.querySelector('h1').textContent,
                tables: [...document.querySelectorAll('section.panel h2')].map((h) => h.textContent),
                cells: [...document.querySelectorAll('td')].map((td) => td.textContent),
                plotLoaded: Boolean(img && img.complete && img.naturalWidth === 600)};"""),
        lambda p: p["plotLoaded"])
    assert page["heading"] == "policy-sweep"
    assert page["tables"] == ["summary.json", "summary.json › policies", "replicas.csv"]
    assert "min-latency" in page["cells"] and "97.3" in page["cells"]
    assert console_problems(browser) == []
    browser.save_screenshot(str(artifacts_dir / "webserver-experiment.png"))


# Pixels of a camera tile's canvas: the preview's orange, the cloud-coloured box and badge.
READ_TILE_PIXELS = """
const tile = [...document.querySelectorAll('.tile')].find((t) => t.dataset.camera === arguments[0]);
if (!tile) return null;
const canvas = tile.querySelector('canvas');
const copy = document.createElement('canvas');
copy.width = canvas.width; copy.height = canvas.height;
const reader = copy.getContext('2d', {willReadFrequently: true});
reader.drawImage(canvas, 0, 0);
const pixels = reader.getImageData(0, 0, copy.width, copy.height).data;
const near = (i, [r, g, b]) => Math.abs(pixels[i] - r) + Math.abs(pixels[i + 1] - g) + Math.abs(pixels[i + 2] - b) < 40;
let orange = 0, cloud = 0;
for (let i = 0; i < pixels.length; i += 4) {
  if (near(i, [255, 128, 0])) orange += 1;
  if (near(i, [91, 91, 214])) cloud += 1;
}
return {orange, cloud, total: pixels.length / 4, images: document.querySelectorAll('img').length};
"""


def test_camera_tiles_show_the_latest_preview_with_its_boxes(broker: BrokerProcess, webserver: UnitProcess,
                                                            browser: webdriver.Chrome, artifacts_dir: Path) -> None:
    from test_webserver import preview_payload  # tests/units is on sys.path (pytest prepend import mode)

    browser.get(webserver.url + "/")
    wait_for(lambda: browser.execute_script("return document.getElementById('stream-state').textContent"),
             lambda state: state == "Live")
    records = publisher(broker, "preprocessor")
    try:
        records.publish_record(frame("porch", 1))
        assert records.flush(10)
        read = lambda: browser.execute_script(READ_TILE_PIXELS, "porch")  # noqa: E731
        before = wait_for(read, lambda p: p is not None)
        assert before["orange"] == 0  # no preview yet: boxes on a neutral frame
        records.publish_preview("porch", preview_payload("porch", 1))
        page = wait_for(read, lambda p: p["orange"] > 0.5 * p["total"] and p["cloud"] > 200)
    finally:
        records.close()
    assert page["images"] == 0  # drawn on the canvas, never put into the DOM
    assert console_problems(browser) == []  # the same-origin image passes the Content-Security-Policy
    browser.save_screenshot(str(artifacts_dir / "webserver-preview.png"))
