"""Cascade policies in the simulator: edge answers drawn per picture, escalations to the cloud."""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest

from edgeoffload.policy import EdgeResult, Observation, load_policy
from edgeoffload.records import FrameRecord, read_records
from edgeoffload.sim import ScenarioError, run_scenario
from edgeoffload.sim.scenario import EdgeAnswer

# Three pictures the edge answers alike every time: confident and right, unsure and wrong, nothing found.
ANSWERS = {"sure": [{"score": 0.9, "detections": 1, "agrees": True}],
           "unsure": [{"score": 0.3, "detections": 2, "agrees": False}],
           "empty": [{"score": None, "detections": 0, "agrees": False}]}
# An edge far from saturation, so no frame is dropped and the escalations are the policy's alone.
LIGHT = {"cameras": [{"name": "cam", "count": 2, "fps": 10, "arrival": "poisson", "frame_bytes": 20_000}],
         "edge": {"replicas": 1, "workers": 4, "service_ms": {"dist": "exponential", "mean": 20}, "answers": ANSWERS},
         "cloud": {"replicas": 2, "workers": 2, "service_ms": {"dist": "constant", "value": 10}}}


class Escalator:
    """A cascade that escalates every `nth` edge answer and keeps what it was shown."""

    name = "escalator"

    def __init__(self, nth: int = 2) -> None:
        self.nth = nth
        self.results: list[tuple[Observation, EdgeResult]] = []

    def estimate_to_cloud(self, obs: Observation) -> bool:
        return False

    def escalate_to_cloud(self, obs: Observation, edge_result: EdgeResult) -> bool:
        self.results.append((obs, edge_result))
        return len(self.results) % self.nth == 0

    def feedback(self, record: FrameRecord) -> None:
        return None


def binomial_within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def test_escalation_share_matches_the_answer_distribution(scenario, tmp_path: Path) -> None:
    """Pictures drawn alike (the cameras name none): cascade:0.5 escalates 'unsure' and 'empty', 2/3
    of the edge's answers; cascade:0.95 all; cascade:0.1 only 'empty'. The cloud's answer is the
    reference, so the answers that disagree are the 'unsure' and 'empty' ones the edge kept."""
    base = scenario(duration_s=200, **LIGHT)
    for spec, escalate_p, disagree_p in (("cascade:0.5", 2 / 3, 0.0), ("cascade:0.95", 1.0, 0.0),
                                         ("cascade:0.1", 1 / 3, 1 / 3)):
        out = tmp_path / f"{spec}.csv"
        summary = run_scenario(base, spec, out=out).summary
        records = list(read_records(out))
        assert summary.dropped == summary.errors == 0 and summary.frames == len(records) > 3000
        escalated = sum(r.escalated for r in records)
        assert escalated == summary.escalated
        assert summary.escalation_share == pytest.approx(escalated / len(records), abs=1e-6)
        if escalate_p == 1.0:
            assert escalated == len(records)
        else:
            assert binomial_within(escalated, len(records), escalate_p), (spec, escalated, len(records))
        assert all((r.site == "cloud") == r.escalated for r in records)
        disagreed = round((1 - summary.agreement) * len(records))
        if disagree_p:
            assert binomial_within(disagreed, len(records), disagree_p), (spec, disagreed)
        else:
            assert disagreed == 0


def test_escalated_records_carry_the_edge_stage_and_both_stages_time(scenario, tmp_path: Path) -> None:
    out = tmp_path / "records.csv"
    run_scenario(scenario(**LIGHT), "cascade:0.5", out=out)
    escalated = [r for r in read_records(out) if r.escalated]
    assert escalated
    for record in escalated:
        assert record.site == "cloud" and record.status == "ok" and record.bytes_sent == 20_000
        assert (record.edge_score, record.edge_detections) in ((0.3, 2), (None, 0))
        assert 0 < record.t_edge_ms < record.t_total_ms
        assert record.t_queue_ms + record.t_network_ms + record.t_inference_ms == pytest.approx(record.t_total_ms)
        assert record.t_queue_ms >= record.t_edge_ms - 1e-6   # the edge stage waited for the cloud's answer
    kept = [r for r in read_records(out) if not r.escalated]
    assert all(r.site == "edge" and r.edge_score is None and r.t_edge_ms == 0 for r in kept)


def test_the_hook_sees_the_drawn_answer_and_the_state_after_the_edge_answered(scenario) -> None:
    policy = Escalator()
    run_scenario(scenario(**LIGHT), policy)
    assert policy.results
    answers = Counter((result.best_score, result.detections) for _, result in policy.results)
    assert set(answers) == {(0.9, 1), (0.3, 2), (None, 0)}
    for obs, result in policy.results:
        assert result.boxes == () and result.inference_s > 0 and result.model == ""
        assert obs.edge.in_flight >= 0 and obs.cloud.in_flight >= 0


def test_pictures_named_by_a_trace_draw_their_own_answers(scenario, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    rows = [f"{i * 0.05:.3f},cam,10000,{'sure' if i % 4 else 'empty'}" for i in range(400)]
    trace.write_text("time_s,camera,bytes,content\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "records.csv"
    built = scenario(duration_s=21, cameras=[{"name": "trace", "trace": str(trace)}], edge=LIGHT["edge"],
                     cloud=LIGHT["cloud"])
    run_scenario(built, "cascade:0.5", out=out)
    records = list(read_records(out))
    assert len(records) == 400
    assert sorted(r.frame_id for r in records if r.escalated) == list(range(0, 400, 4))


def test_a_failed_escalation_keeps_the_edge_answer(scenario, tmp_path: Path) -> None:
    """No cloud replica: every escalation fails, and each frame still has exactly one record, the
    edge's answer, as on the testbed (a policy that escalates whatever the cloud's health)."""
    for dispatch in (None, {"queue_size": 4, "per_replica": 2}):
        out = tmp_path / "records.csv"
        summary = run_scenario(scenario(**{**LIGHT, "cloud": {"replicas": 0}}, dispatch=dispatch), Escalator(),
                               out=out).summary
        records = list(read_records(out))
        assert set(Counter((r.camera, r.frame_id) for r in records).values()) == {1}
        failed = [r for r in records if r.escalated]
        assert failed and summary.errors == 0 and summary.ok == summary.frames == len(records)
        assert abs(len(failed) - len(records) / 2) <= 1   # every other answer
        assert all(r.site == "edge" and r.status == "ok" and r.reason == "escalation_failed: no_ready_pods"
                   and r.t_edge_ms > 0 for r in failed)
        assert summary.cloud_frames == 0 and summary.escalated == len(failed)
        assert binomial_within(round(summary.agreement * len(records)), len(records), 1 / 3)


def test_escalations_go_through_the_dispatch_model(scenario) -> None:
    summary = run_scenario(scenario(**LIGHT, dispatch={"queue_size": 8, "per_replica": 1}), "cascade:0.5").summary
    assert summary.escalated == summary.cloud_frames > 0 and summary.dropped == 0


def test_policies_without_the_hook_are_unchanged_by_answers(scenario) -> None:
    """The answers only add the agreement share: every other figure is the same as without them."""
    with_answers = scenario(**LIGHT)
    without = scenario(**{**LIGHT, "edge": {**LIGHT["edge"], "answers": None}})
    for spec in ("min-latency", "random:0.3", "edge-only"):
        plain = run_scenario(without, spec).summary
        measured = run_scenario(with_answers, spec).summary
        assert dataclasses.replace(measured, agreement=None) == plain
        assert plain.agreement is None and plain.escalated == 0
    edge_only = run_scenario(with_answers, "edge-only").summary
    assert binomial_within(round(edge_only.agreement * edge_only.ok), edge_only.ok, 1 / 3)
    assert run_scenario(with_answers, "cloud-only").summary.agreement == 1.0


def test_budget_cascade_escalates_at_most_its_share(scenario) -> None:
    summary = run_scenario(scenario(duration_s=100, **LIGHT), "cascade-budget:0.2").summary
    assert 0.15 <= summary.escalation_share <= 0.201


def test_answers_are_validated_and_needed_by_cascades(scenario) -> None:
    with pytest.raises(ValueError, match="needs edge.answers"):
        run_scenario(scenario(), "cascade:0.5")
    with pytest.raises(ScenarioError, match="cloud.answers.*only the edge"):
        scenario(cloud={"answers": ANSWERS})
    with pytest.raises(ScenarioError, match=r"edge.answers.p\[0\].score: is null exactly when nothing was found"):
        scenario(edge={"answers": {"p": [{"score": None, "detections": 2}]}})
    with pytest.raises(ScenarioError, match=r"edge.answers.p\[0\].agrees: must be true or false"):
        scenario(edge={"answers": {"p": [{"score": 1.0, "agrees": "yes"}]}})
    with pytest.raises(ScenarioError, match=r"edge.answers.p: must be a non-empty list"):
        scenario(edge={"answers": {"p": []}})
    parsed = scenario(edge={"answers": {"p": [{"score": 2.5}]}}).edge.answers
    assert parsed == {"p": (EdgeAnswer(2.5, 1, None),)}


def test_answers_from_a_profile_file(scenario, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text('{"version": 1, "edge": {"answers": {"frame-0": [{"score": 4.0, "detections": 1, '
                       '"agrees": true}]}}}', encoding="utf-8")
    built = scenario(edge={"answers": {"file": str(profile), "key": "edge.answers"}})
    assert built.edge.answers == {"frame-0": (EdgeAnswer(4.0, 1, True),)}
    assert run_scenario(built, "cascade:5").summary.escalation_share == pytest.approx(1.0, abs=0.02)
