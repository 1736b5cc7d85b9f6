"""Example offloading policy for the EdgePreprocessorUnit: edit this file to try your own.

Use it with

    PRE_POLICY=EdgePreprocessorUnit/policy.py:estimate_to_cloud

(the simulator takes the same spec, so the same function can be compared in simulation and on
the testbed). The function gets an `edgeoffload.policy.Observation` for one frame and returns
True to send the frame to the cloud, False to keep it on the edge. It is called for every frame,
one call at a time, so keep it fast (microseconds) and free of I/O.

What an Observation holds (see edgeoffload/policy.py):
  obs.camera, obs.frame_id, obs.frame_bytes (JPEG size that would be sent), obs.deadline_s
  obs.edge / obs.cloud: SiteState(in_flight, replicas, service_s, rtt_s, uplink_bps, healthy)
    in_flight   frames queued for or being served by that site
    replicas    ready replicas assumed for the site (PRE_EDGE_REPLICAS / PRE_CLOUD_REPLICAS)
    service_s   measured average inference time per frame (EWMA)
    rtt_s       measured network round trip (the cloud's WAN latency; ~0 on the edge)
    uplink_bps  estimated bandwidth towards the site (inf for the edge)
    healthy     False while the site fails its ready probe or keeps failing requests
"""
from edgeoffload.policy import Observation, predicted_completion_s

# Offload only once this many frames wait per edge replica: a short queue on the edge is
# cheaper than paying the uplink for every frame.
EDGE_QUEUE_PER_REPLICA = 2.0


def estimate_to_cloud(obs: Observation) -> bool:
    """Keep frames on the edge until it is congested, then offload if the cloud is predicted faster."""
    if not obs.edge.healthy:
        return obs.cloud.healthy                 # edge down: the cloud is the only option
    if not obs.cloud.healthy:
        return False
    edge_queue = obs.edge.in_flight / max(obs.edge.replicas, 1)
    if edge_queue < EDGE_QUEUE_PER_REPLICA:
        return False
    # predicted completion = waiting behind in-flight frames + upload + round trip + inference
    return predicted_completion_s(obs.cloud, obs.frame_bytes) < predicted_completion_s(obs.edge, obs.frame_bytes)
