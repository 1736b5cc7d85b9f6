"""Scale-out of one inference site (edgeoffload.load.scaleout): throughput against 1-4 replicas,
and how soon a replica added under steady load takes its share of the frames.

Replicas are real gunicorn inference units (Haar face on 160x120 frames) whose every inference
is padded to 100 ms by sleeping (INFER_SLEEP_PAD_MS), one at a time, so a replica answers at most
10 frames/s and is not CPU-bound: on 2 vCPUs, replicas add capacity as separate machines would.
The preprocessor's engine discovers them through the EndpointSlice API (`kubernetes`), or sends to
the pool's per-connection relay (`static`: a Service), renewing its connections every second or
never (the behaviour before the elastic data path).
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPLICAS = (1, 2, 3, 4)
OFFERED_FPS = 60          # above four replicas' 40 frames/s
SHARE_RATE_FPS = 12       # steady load while a second replica is added
SHARE_RUNS = 3
NEVER = 1e9


def main() -> None:
    from benchmarks.report import markdown_table, write_section
    from edgeoffload.load.scaleout import ElasticSetup, ElasticSite, new_replica_share, throughput

    load_before = os.getloadavg()
    setup = ElasticSetup(sleep_pad_ms=100, instances=1, per_replica=2)
    with ElasticSite(setup).start(replicas=1) as site:
        rows = [throughput(site, replicas, OFFERED_FPS, duration_s=4.0) for replicas in REPLICAS]
    base = rows[0].answered_fps
    throughput_table = markdown_table(
        ["ready replicas", "answered frames/s", "x one replica", "dropped at the preprocessor"],
        [[r.replicas, f"{r.answered_fps:.1f}", f"{r.answered_fps / base:.2f}", r.dropped] for r in rows])

    share_rows = []
    for label, variant in (("kubernetes (EndpointSlices, per request)", ElasticSetup(discovery="kubernetes")),
                           ("static URL, connections renewed every 1 s", ElasticSetup(discovery="static")),
                           ("static URL, keep-alive never renewed (before)", ElasticSetup(discovery="static",
                                                                                        recycle_s=NEVER))):
        results = []
        for _ in range(SHARE_RUNS):
            with ElasticSite(variant).start(replicas=1) as site:
                results.append(new_replica_share(site, SHARE_RATE_FPS))
        shares = [r.share_5s for r in results]
        firsts = [r.first_frame_s for r in results if r.first_frame_s is not None]
        reached = [r.time_to_share_s for r in results if r.time_to_share_s is not None]
        share_rows.append([label, f"{statistics.median(shares):.0%} ({min(shares):.0%}-{max(shares):.0%})",
                           f"{statistics.median(firsts):.2f} s" if firsts else "never",
                           f"{statistics.median(reached):.2f} s ({len(reached)}/{SHARE_RUNS})" if reached
                           else f"never (0/{SHARE_RUNS})"])
    load_after = os.getloadavg()
    body = f"""Load average (1/5/15 min) before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}.

Each replica: one detector instance, every inference padded to 100 ms by sleeping
(`INFER_SLEEP_PAD_MS=100`), at most 2 requests at once from the preprocessor
(`PRE_EDGE_REPLICA_CONCURRENCY=2`), so one replica answers 10 frames/s; offered load
{OFFERED_FPS} frames/s (the excess is dropped from the preprocessor's queue), measured over 4 s
after a 1 s warm-up, replicas found through the EndpointSlice API.

{throughput_table}

A second replica added under a steady {SHARE_RATE_FPS} frames/s (median of {SHARE_RUNS} runs, min-max in
brackets): its share of the site's frames answered in the 5 s after it passed its ready probe,
the time from ready to its first answered frame, and the time until it answered 40 % of the
site's last 10 frames.

{markdown_table(["how the preprocessor finds replicas", "share of the next 5 s", "first frame after", "40 % of the last 10 after"], share_rows)}
"""
    write_section("scale-out", "python benchmarks/scale_out.py", body)


if __name__ == "__main__":
    main()
