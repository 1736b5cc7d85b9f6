"""Lend each concurrent caller its own detector instance.

A cv2.dnn.Net (and a cascade classifier's scratch buffers) must not be used by two threads
at once, so a serving process builds one instance per thread up front and threads borrow
them. Backends that are thread-safe (`thread_safe = True`) are built once and shared.
"""
from __future__ import annotations

import queue
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from edgeoffload.detect.base import Detector


class PoolExhausted(TimeoutError):
    """No detector instance became free within the timeout."""


class DetectorPool:
    def __init__(self, factory: Callable[[], Detector], size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        first = factory()
        self.size = size
        self.name = first.name
        self.input_size = first.input_size
        self.instances: list[Detector] = [first]
        if not getattr(first, "thread_safe", False):
            self.instances += [factory() for _ in range(size - 1)]
        self._free: queue.Queue[Detector] = queue.Queue()
        for index in range(size):
            self._free.put(self.instances[index % len(self.instances)])

    @contextmanager
    def borrow(self, timeout: float | None = None) -> Iterator[Detector]:
        """An instance for this caller alone until the block ends."""
        try:
            detector = self._free.get(timeout=timeout)
        except queue.Empty:
            raise PoolExhausted(f"no free {self.name} instance within {timeout}s") from None
        try:
            yield detector
        finally:
            self._free.put(detector)

    def detect(self, image_bgr: np.ndarray, timeout: float | None = None) -> list:
        with self.borrow(timeout) as detector:
            return detector.detect(image_bgr)

    def warm_up(self, image_bgr: np.ndarray) -> None:
        """Run every distinct instance once, so first real requests do not pay for lazy allocation."""
        for detector in self.instances:
            detector.detect(image_bgr)
