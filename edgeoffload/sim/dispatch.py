"""The preprocessor's dispatch, as the simulator models it (scenario key `dispatch`).

The EdgePreprocessorUnit holds a bounded queue per site (the oldest frame is dropped when it
is full) and sends a frame only while the site has a free slot: at most `per_replica`
requests at once to each ready replica, so the site's concurrency is ready replicas x
per_replica and follows the HPA. Each request goes to the ready replica with the fewest
requests outstanding (ties: the one picked longest ago), as edgeoffload.balance does. A
request stays outstanding until its answer is back at the preprocessor, including the WAN
both ways for the cloud.

Without `dispatch` the simulator sends every frame at once, round robin over the ready pods.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Callable

from edgeoffload.sim.pools import Frame, Pod, Pool

Send = Callable[[Frame, Pod, float], None]        # hand a frame to a chosen pod (over the WAN if remote)
Refuse = Callable[[Frame, float, str], None]      # account for a frame that is not sent


class Dispatcher:
    """One site's queue and concurrency at the preprocessor."""

    __slots__ = ("pool", "per_replica", "max_in_flight", "queue_size", "queue", "outstanding", "_send",
                 "_refuse", "_picks")

    def __init__(self, pool: Pool, per_replica: int, queue_size: int, max_in_flight: int, send: Send,
                 refuse: Refuse) -> None:
        self.pool = pool
        self.per_replica = per_replica
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.queue: deque[Frame] = deque()
        self.outstanding = 0
        self._send = send
        self._refuse = refuse
        self._picks = itertools.count(1)

    @property
    def capacity(self) -> int:
        return min(self.max_in_flight, len(self.pool.endpoints) * self.per_replica)

    def submit(self, frame: Frame, now: float) -> None:
        """A frame the policy gave this site: send it now, or queue it (evicting the oldest)."""
        if not self.pool.endpoints:
            self._refuse(frame, now, "no_ready_pods")
            return
        if not self.queue and (pod := self._pick()) is not None:
            self._send_to(frame, pod, now)
            return
        if len(self.queue) >= self.queue_size:
            self._refuse(self.queue.popleft(), now, "queue_full")
        self.queue.append(frame)

    def done(self, frame: Frame, now: float) -> None:
        """The frame's answer (or refusal) is back at the preprocessor: its slot is free."""
        pod = frame.target
        if pod is None:
            return
        frame.target = None
        pod.sent -= 1
        self.outstanding -= 1
        self.pump(now)

    def pump(self, now: float) -> None:
        """Send queued frames while slots are free (after an answer, or a replica became ready).
        A frame leaves the queue before it is sent: a refusal on the way re-enters pump()."""
        queue = self.queue
        while queue and (pod := self._pick()) is not None:
            self._send_to(queue.popleft(), pod, now)

    def _pick(self) -> Pod | None:
        """The least-loaded ready replica with a free slot, if the site has one."""
        if self.outstanding >= self.capacity:
            return None
        best: Pod | None = None
        for pod in self.pool.endpoints:
            if pod.sent < self.per_replica and (best is None or (pod.sent, pod.last_pick) < (best.sent, best.last_pick)):
                best = pod
        return best

    def _send_to(self, frame: Frame, pod: Pod, now: float) -> None:
        pod.sent += 1
        pod.last_pick = next(self._picks)
        self.outstanding += 1
        frame.target = pod
        frame.dispatched = now
        self._send(frame, pod, now)


__all__ = ["Dispatcher"]
