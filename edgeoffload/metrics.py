"""Prometheus metrics of every unit, safe under gunicorn's multiple worker processes.

When PROMETHEUS_MULTIPROC_DIR is set (gunicorn_conf.py sets it before workers fork) each
process writes its samples to files there and /metrics aggregates them with a
MultiProcessCollector; otherwise the default in-process registry is used. The env var must be
set before this module is imported, because prometheus_client picks its storage at import.

Metrics are grouped by unit below; add a unit's metrics in its own block.
"""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)

NAMESPACE = "edgeoffload"


def render() -> tuple[bytes, str]:
    """(body, content type) of a /metrics response covering all worker processes."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------------------------
# Inference unit (EdgeInferenceUnit / CloudInferenceUnit): edgeoffload/units/inference.py
# ---------------------------------------------------------------------------------------------
# Model run time, 1 ms (tiny models, cache hits) to 2 s (big models on a starved CPU).
INFERENCE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15,
                             0.25, 0.4, 0.6, 1.0, 1.5, 2.0)

INFERENCE_REQUESTS = Counter(
    "inference_requests", "HTTP requests answered by the inference unit, by route and status code.",
    ["site", "route", "code"], namespace=NAMESPACE)
INFERENCE_FAILURES = Counter(
    "inference_failures", "Inference requests that did not produce detections, by reason "
    "(bad_image, bad_request (a malformed v2 request), too_large, unsupported_type, unknown_model, overloaded, "
    "not_ready, error).",
    ["site", "reason"], namespace=NAMESPACE)
INFERENCE_SECONDS = Histogram(
    "inference_seconds", "Time spent in the detector per frame (decode and HTTP excluded).",
    ["site", "model"], namespace=NAMESPACE, buckets=INFERENCE_SECONDS_BUCKETS)
INFERENCE_IN_FLIGHT = Gauge(
    "inference_in_flight", "Inference requests admitted and not yet answered (HPA custom metric).",
    ["site"], namespace=NAMESPACE, multiprocess_mode="livesum")
# ------------------------------------------------------------------------- end inference unit


# ---------------------------------------------------------------------------------------------
# Preprocessor unit (EdgePreprocessorUnit): edgeoffload/units/preprocessor.py
# ---------------------------------------------------------------------------------------------
# End-to-end latency per frame on the preprocessor's clock: 5 ms (cache-hot edge) to 10 s.
PREPROCESSOR_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                                0.75, 1.0, 2.0, 5.0, 10.0)

PREPROCESSOR_FRAMES = Counter(
    "preprocessor_frames", "Frames that reached the preprocessor, by origin (http, source).",
    ["origin"], namespace=NAMESPACE)
PREPROCESSOR_DECISIONS = Counter(
    "preprocessor_decisions", "Policy decisions, by chosen site.", ["site"], namespace=NAMESPACE)
PREPROCESSOR_RECORDS = Counter(
    "preprocessor_records", "Frame records emitted (one per accepted frame), by answering site and status.",
    ["site", "status"], namespace=NAMESPACE)
PREPROCESSOR_DROPS = Counter(
    "preprocessor_drops", "Frames without detections, by reason (queue_full, deadline_expired, bad_frame, "
    "failed, policy_error, shutdown).", ["reason"], namespace=NAMESPACE)
PREPROCESSOR_FAILOVERS = Counter(
    "preprocessor_failovers", "Frames answered by the other site after the chosen one failed.",
    ["from_site", "to_site"], namespace=NAMESPACE)
PREPROCESSOR_ESCALATIONS = Counter(
    "preprocessor_escalations", "Edge answers a cascade policy escalated to the cloud, by outcome "
    "(answered: the cloud's answer is final; failed: the edge's answer stands).", ["outcome"], namespace=NAMESPACE)
PREPROCESSOR_LATENCY = Histogram(
    "preprocessor_latency_seconds", "End-to-end latency per answered frame (arrival to answer).",
    ["site"], namespace=NAMESPACE, buckets=PREPROCESSOR_LATENCY_BUCKETS)
PREPROCESSOR_IN_FLIGHT = Gauge(
    "preprocessor_in_flight", "Frames queued for or being served by a site.", ["site"],
    namespace=NAMESPACE, multiprocess_mode="livesum")
PREPROCESSOR_MQTT_UNACKED = Gauge(
    "preprocessor_mqtt_unacked", "Records published and not yet acknowledged by the broker.",
    namespace=NAMESPACE, multiprocess_mode="livesum")
# Info metrics are not multiprocess-safe; a gauge with the name as a label is the usual substitute.
PREPROCESSOR_POLICY = Gauge(
    "preprocessor_policy_info", "The offloading policy in use (value 1).", ["policy"],
    namespace=NAMESPACE, multiprocess_mode="max")
# ------------------------------------------------------------------------ end preprocessor unit
