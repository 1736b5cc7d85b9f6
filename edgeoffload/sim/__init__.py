"""Discrete-event simulator of the edge-cloud offloading system (simpy clock, exact FIFO pools).

    from edgeoffload.sim import load_scenario, run_scenario
    from edgeoffload.policy import load_policy
    result = run_scenario(load_scenario("experiments/scenarios/baseline.yaml"), load_policy("min-latency"))
    print(result.summary.table())
"""
from edgeoffload.sim.distributions import PROFILE_SCHEMA, ScenarioError
from edgeoffload.sim.engine import SimResult, run_scenario
from edgeoffload.sim.scenario import Scenario, load_scenario
from edgeoffload.sim.stats import Summary

__all__ = ["PROFILE_SCHEMA", "Scenario", "ScenarioError", "SimResult", "Summary", "load_scenario", "run_scenario"]
