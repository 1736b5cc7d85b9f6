from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from edgeoffload.policy import (BUILTINS, Alternate, BudgetCascade, Cascade, Deadline, EdgeResult, EpsilonGreedy,
                                MinLatency, Observation, Policy, QueueThreshold, RandomSplit, SiteState, as_policy,
                                escalation_hook, load_policy, predicted_completion_s)
from edgeoffload.records import Detection, FrameRecord

FAST_EDGE = SiteState(in_flight=0, replicas=1, service_s=0.02)
BUSY_EDGE = SiteState(in_flight=10, replicas=1, service_s=0.05)
CLOUD = SiteState(in_flight=0, replicas=4, service_s=0.01, rtt_s=0.04, uplink_bps=100e6)


def obs(edge: SiteState = FAST_EDGE, cloud: SiteState = CLOUD, frame_id: int = 1,
        deadline_s: float | None = None, frame_bytes: int = 50_000) -> Observation:
    return Observation(now=0.0, camera="cam", frame_id=frame_id, frame_bytes=frame_bytes,
                       deadline_s=deadline_s, edge=edge, cloud=cloud)


def record(site: str, total_ms: float, frame_id: int, status: str = "ok") -> FrameRecord:
    return FrameRecord(camera="cam", frame_id=frame_id, captured_at=0.0, site=site,  # type: ignore[arg-type]
                       status=status, t_total_ms=total_ms)  # type: ignore[arg-type]


def test_predicted_completion_adds_wait_transfer_rtt_service() -> None:
    site = SiteState(in_flight=4, replicas=2, service_s=0.1, rtt_s=0.05, uplink_bps=8e6)
    # wait 4/2*0.1=0.2, transfer 1e6 bytes*8/8e6=1.0, rtt 0.05, service 0.1
    assert predicted_completion_s(site, 1_000_000) == pytest.approx(1.35)
    assert math.isinf(predicted_completion_s(SiteState(healthy=False), 1))
    assert math.isinf(predicted_completion_s(SiteState(replicas=0), 1))


def test_every_builtin_loads_and_satisfies_the_protocol() -> None:
    for name in BUILTINS:
        policy = load_policy(name)
        assert isinstance(policy, Policy)
        assert isinstance(policy.estimate_to_cloud(obs()), bool)
        policy.feedback(record("edge", 10.0, 1))


def test_edge_only_and_cloud_only() -> None:
    assert load_policy("edge-only").estimate_to_cloud(obs(edge=BUSY_EDGE)) is False
    assert load_policy("cloud-only").estimate_to_cloud(obs()) is True


def test_alternate_alternates_starting_on_edge() -> None:
    policy = Alternate()
    decisions = [policy.estimate_to_cloud(obs(frame_id=i)) for i in range(6)]
    assert decisions == [False, True, False, True, False, True]


def test_random_split_matches_probability_and_repeats_with_seed() -> None:
    policy = load_policy("random:0.3")
    assert policy.name == "random:0.3"
    decisions = [policy.estimate_to_cloud(obs()) for _ in range(20_000)]
    assert sum(decisions) / len(decisions) == pytest.approx(0.3, abs=0.015)
    again = load_policy("random:0.3")
    assert [again.estimate_to_cloud(obs()) for _ in range(20_000)] == decisions
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        RandomSplit(1.5)


@pytest.mark.parametrize("spec", ["random:0.5", "bandit:1"])   # bandit:1 explores on every frame
def test_the_seed_reaches_the_random_builtins(spec: str) -> None:
    def flips(seed: int | None) -> list[bool]:
        policy = load_policy(spec, seed=seed)
        return [policy.estimate_to_cloud(obs(frame_id=i)) for i in range(200)]
    assert flips(1) == flips(1)                     # the same seed repeats
    assert flips(1) != flips(2)                     # another seed flips other coins
    assert flips(None) == flips(0)                  # no seed: seed 0, as before


def test_user_classes_get_the_seed_when_they_take_one(tmp_path) -> None:
    policy_file = tmp_path / "seeded.py"
    policy_file.write_text(
        "import random\n"
        "class Coin:\n"
        "    name = 'coin'\n"
        "    def __init__(self, seed=123):\n"
        "        self.seed = seed\n"
        "        self._rng = random.Random(seed)\n"
        "    def estimate_to_cloud(self, obs):\n"
        "        return self._rng.random() < 0.5\n"
        "    def feedback(self, record):\n"
        "        pass\n"
        "class Plain:\n"
        "    name = 'plain'\n"
        "    def estimate_to_cloud(self, obs):\n"
        "        return False\n"
        "    def feedback(self, record):\n"
        "        pass\n")
    assert load_policy(f"{policy_file}:Coin", seed=7).seed == 7       # type: ignore[attr-defined]
    assert load_policy(f"{policy_file}:Coin").seed == 123             # type: ignore[attr-defined]
    assert load_policy(f"{policy_file}:Plain", seed=7).name == "plain"   # no seed parameter: built as is


def test_queue_threshold_offloads_at_k_per_replica() -> None:
    policy = QueueThreshold(3)
    assert not policy.estimate_to_cloud(obs(edge=SiteState(in_flight=5, replicas=2)))
    assert policy.estimate_to_cloud(obs(edge=SiteState(in_flight=6, replicas=2)))
    assert not policy.estimate_to_cloud(obs(edge=SiteState(in_flight=9), cloud=SiteState(healthy=False)))
    assert policy.estimate_to_cloud(obs(edge=SiteState(healthy=False)))


def test_min_latency_picks_the_lower_predicted_completion() -> None:
    policy = MinLatency()
    assert predicted_completion_s(FAST_EDGE, 50_000) < predicted_completion_s(CLOUD, 50_000)
    assert policy.estimate_to_cloud(obs(edge=FAST_EDGE)) is False
    assert predicted_completion_s(BUSY_EDGE, 50_000) > predicted_completion_s(CLOUD, 50_000)
    assert policy.estimate_to_cloud(obs(edge=BUSY_EDGE)) is True
    slow_link = SiteState(replicas=4, service_s=0.01, rtt_s=0.04, uplink_bps=0.5e6)  # 0.8 s to send 50 kB > 0.55 s on the busy edge
    assert policy.estimate_to_cloud(obs(edge=BUSY_EDGE, cloud=slow_link)) is False


def test_deadline_stays_on_edge_unless_it_would_miss() -> None:
    policy = Deadline()
    assert policy.estimate_to_cloud(obs(edge=FAST_EDGE, deadline_s=0.1)) is False
    assert policy.estimate_to_cloud(obs(edge=BUSY_EDGE, deadline_s=0.1)) is True
    # the edge misses, but the cloud would be even later: stay
    assert policy.estimate_to_cloud(obs(edge=BUSY_EDGE, cloud=SiteState(healthy=False), deadline_s=0.1)) is False
    # no per-frame deadline: the policy's default (0.2 s) applies
    assert policy.estimate_to_cloud(obs(edge=SiteState(in_flight=1, service_s=0.09))) is False
    assert load_policy("deadline:0.05").estimate_to_cloud(obs(edge=SiteState(in_flight=1, service_s=0.09)))


def test_bandit_learns_the_faster_site_per_load_context() -> None:
    policy = EpsilonGreedy(epsilon=0.0)
    # untried arms are explored first
    assert policy.estimate_to_cloud(obs(frame_id=1)) is False
    policy.feedback(record("edge", 300.0, 1))
    assert policy.estimate_to_cloud(obs(frame_id=2)) is True
    policy.feedback(record("cloud", 80.0, 2))
    assert policy.estimate_to_cloud(obs(frame_id=3)) is True   # cloud measured faster when edge idle
    policy.feedback(record("cloud", 90.0, 3))
    assert policy.mean_ms(0, True) == pytest.approx(85.0)
    # failures count as a penalty, so a failing cloud is abandoned
    for frame_id in range(4, 10):
        policy.estimate_to_cloud(obs(frame_id=frame_id))
        policy.feedback(record("cloud", 0.0, frame_id, status="error"))
    assert policy.estimate_to_cloud(obs(frame_id=10)) is False


def test_bandit_ignores_feedback_for_frames_it_did_not_decide() -> None:
    policy = EpsilonGreedy(epsilon=0.0)
    policy.feedback(record("cloud", 5.0, 99))
    assert policy.mean_ms(0, True) is None


def test_loader_accepts_module_attr_file_and_plain_function(tmp_path: Path) -> None:
    policy_file = tmp_path / "mine.py"
    policy_file.write_text(textwrap.dedent("""
        def estimate_to_cloud(obs):
            return obs.frame_bytes > 1000

        class Learner:
            name = "learner"
            def __init__(self):
                self.seen = []
            def estimate_to_cloud(self, obs):
                return True
            def feedback(self, record):
                self.seen.append(record.frame_id)
    """))
    function_policy = load_policy(f"{policy_file}:estimate_to_cloud")
    assert function_policy.name == "estimate_to_cloud"
    assert function_policy.estimate_to_cloud(obs(frame_bytes=2000)) is True
    assert function_policy.estimate_to_cloud(obs(frame_bytes=10)) is False
    function_policy.feedback(record("edge", 1.0, 1))  # accepted although the function cannot learn
    learner = load_policy(f"{policy_file}:Learner")
    learner.feedback(record("cloud", 1.0, 7))
    assert learner.seen == [7]  # type: ignore[attr-defined]
    assert load_policy("edgeoffload.policy:MinLatency").name == "min-latency"


def test_as_policy_wraps_objects_without_feedback() -> None:
    class NoFeedback:
        def estimate_to_cloud(self, obs: Observation) -> bool:
            return True

    wrapped = as_policy(NoFeedback())
    assert wrapped.name == "NoFeedback" and wrapped.estimate_to_cloud(obs())
    with pytest.raises(ValueError, match="not a policy"):
        as_policy(42)


@pytest.mark.parametrize("spec, message", [
    ("", "empty policy"),
    ("nonsense", "unknown policy"),
    ("random:abc", "takes a number"),
    ("queue-threshold:0", "k > 0"),
    ("cascade:x", "takes a number"),
    ("cascade:inf", "finite"),
    ("cascade-budget:1.5", "0 <= share <= 1"),
    ("no/such/file.py:f", "not found"),
    ("edgeoffload.policy:Missing", "no attribute"),
    ("no_such_module_xyz:f", "cannot import"),
])
def test_loader_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_policy(spec)


def edge_result(score: float | None) -> EdgeResult:
    return EdgeResult(score, 0 if score is None else 1, 0.05, "edge/haar-face")


def test_edge_result_summarises_detections() -> None:
    found = (Detection("face", 1.5, (0, 0, 10, 10)), Detection("face", 4.0, (20, 0, 10, 10)))
    result = EdgeResult.of(found, 0.08, "edge/haar-face")
    assert (result.best_score, result.detections, result.boxes) == (4.0, 2, found)
    assert EdgeResult.of((), 0.08, "m").best_score is None


def test_cascade_escalates_unsure_or_empty_answers_while_the_cloud_is_healthy() -> None:
    policy = load_policy("cascade:2.5")
    assert isinstance(policy, Cascade) and policy.name == "cascade:2.5"
    hook = escalation_hook(policy)
    assert hook is not None
    assert [hook(obs(), edge_result(s)) for s in (None, 1.0, 2.5, 4.0)] == [True, True, False, False]
    assert hook(obs(cloud=SiteState(healthy=False)), edge_result(None)) is False
    assert policy.estimate_to_cloud(obs()) is False                       # edge first
    assert policy.estimate_to_cloud(obs(edge=SiteState(healthy=False))) is True
    assert load_policy("cascade").name == "cascade:0.5"


def test_policies_without_the_hook_have_none() -> None:
    for name in ("edge-only", "min-latency", "bandit", "random"):
        assert escalation_hook(load_policy(name)) is None


def test_budget_cascade_escalates_the_least_confident_share_of_recent_answers() -> None:
    """Uniform scores: about `share` of them escalated, and those below the window's share-quantile."""
    import random

    rng = random.Random(5)
    policy = BudgetCascade(share=0.2, window=100)
    scores = [rng.random() for _ in range(5000)]
    decisions = [policy.escalate_to_cloud(obs(), edge_result(s)) for s in scores]
    share = sum(decisions) / len(decisions)
    assert 0.17 <= share <= 0.2
    escalated = [s for s, d in zip(scores, decisions) if d]
    kept = [s for s, d in zip(scores, decisions) if not d]
    assert max(escalated) < 0.35 and sum(escalated) / len(escalated) < 0.12 and sum(kept) / len(kept) > 0.55
    # any 100 consecutive answers hold at most 20 escalations, even when every answer is empty
    empty = BudgetCascade(share=0.2, window=100)
    flags = [empty.escalate_to_cloud(obs(), edge_result(None)) for _ in range(1000)]
    assert all(sum(flags[i:i + 100]) <= 20 for i in range(900)) and sum(flags) >= 190
    assert load_policy("cascade-budget:0.1").name == "cascade-budget:0.1"


def test_as_policy_keeps_the_hook_of_objects_without_feedback() -> None:
    class Bare:
        def estimate_to_cloud(self, obs: Observation) -> bool:
            return False

        def escalate_to_cloud(self, obs: Observation, edge_result: EdgeResult) -> bool:
            return edge_result.detections == 0

    wrapped = as_policy(Bare())
    hook = escalation_hook(wrapped)
    assert hook is not None and hook(obs(), edge_result(None)) and not hook(obs(), edge_result(3.0))
    assert escalation_hook(as_policy(lambda o: True)) is None


def test_a_policy_file_with_a_syntax_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "broken.py"
    policy_file.write_text("def estimate_to_cloud(obs):\n    return obs.frame_bytes >\n")
    with pytest.raises(ValueError) as caught:
        load_policy(f"{policy_file}:estimate_to_cloud")
    message = str(caught.value)
    assert message.startswith(f"policy file {policy_file}:2: SyntaxError: ") and "\n" not in message


def test_a_policy_file_whose_import_fails_names_its_line(tmp_path: Path) -> None:
    policy_file = tmp_path / "needs.py"
    policy_file.write_text("import math\nimport no_such_module_for_policies\n\ndef estimate_to_cloud(obs):\n    return True\n")
    with pytest.raises(ValueError, match=rf"^policy file {policy_file}:2: ModuleNotFoundError: "
                                         r"No module named 'no_such_module_for_policies'$"):
        load_policy(f"{policy_file}:estimate_to_cloud")


def test_a_policy_file_imports_modules_beside_it(tmp_path: Path) -> None:
    (tmp_path / "policy_helpers_beside.py").write_text("LIMIT = 1000\n")
    policy_file = tmp_path / "mine_with_helper.py"
    policy_file.write_text("from policy_helpers_beside import LIMIT\n\n"
                           "def estimate_to_cloud(obs):\n    return obs.frame_bytes > LIMIT\n")
    policy = load_policy(f"{policy_file}:estimate_to_cloud")
    assert policy.estimate_to_cloud(obs(frame_bytes=2000)) is True
    assert policy.estimate_to_cloud(obs(frame_bytes=10)) is False


def test_a_misspelt_builtin_suggests_the_name_meant() -> None:
    with pytest.raises(ValueError, match=r"^unknown policy 'min-latancy' \(did you mean 'min-latency'\?\)"):
        load_policy("min-latancy")
