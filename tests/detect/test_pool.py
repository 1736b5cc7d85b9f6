import threading

import numpy as np
import pytest

from edgeoffload.detect import DetectorPool, PoolExhausted


class CountingDetector:
    """Records how many callers use it at once, to prove the pool never shares an instance."""

    name = "counting"
    input_size = None

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._lock = threading.Lock()

    def detect(self, image_bgr):
        with self._lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        threading.Event().wait(0.002)
        with self._lock:
            self.active -= 1
        return []


class SharedDetector(CountingDetector):
    thread_safe = True


def test_each_borrower_has_an_instance_to_itself():
    pool = DetectorPool(CountingDetector, size=3)
    frame = np.zeros((4, 4, 3), np.uint8)
    threads = [threading.Thread(target=lambda: [pool.detect(frame) for _ in range(20)]) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pool.instances) == 3
    assert sum(d.calls for d in pool.instances) == 120
    assert all(d.max_active == 1 for d in pool.instances)


def test_thread_safe_detectors_are_built_once_and_lent_concurrently():
    pool = DetectorPool(SharedDetector, size=2)
    assert len(pool.instances) == 1
    with pool.borrow() as first, pool.borrow() as second:
        assert first is second


def test_borrow_times_out_when_all_instances_are_busy():
    pool = DetectorPool(CountingDetector, size=1)
    with pool.borrow():
        with pytest.raises(PoolExhausted):
            with pool.borrow(timeout=0.01):
                pass
    with pool.borrow(timeout=0.01) as detector:
        assert detector is pool.instances[0]


def test_warm_up_runs_every_instance_once():
    pool = DetectorPool(CountingDetector, size=2)
    pool.warm_up(np.zeros((4, 4, 3), np.uint8))
    assert [d.calls for d in pool.instances] == [1, 1]


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError):
        DetectorPool(CountingDetector, size=0)
