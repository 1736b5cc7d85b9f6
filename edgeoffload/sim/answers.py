"""The edge's answer to each simulated frame, for cascade policies and the agreement share.

The simulator has no pixels: a frame's edge answer is drawn from the answers the real edge
model gave to the same picture (scenario key `edge.answers`, measured by `edgeoffload
profile`), so a picture the edge model finds hard is hard on every frame that shows it. A frame
of a picture the scenario does not list (or of a camera without pictures) draws from all the
listed answers alike.
"""
from __future__ import annotations

import random
from typing import Mapping

from edgeoffload.sim.scenario import EdgeAnswer


class AnswerDraws:
    """Seeded draws of edge answers by picture."""

    __slots__ = ("_by_picture", "_pooled", "_choice", "agreement_known")

    def __init__(self, answers: Mapping[str, tuple[EdgeAnswer, ...]], rng: random.Random) -> None:
        if not answers:
            raise ValueError("AnswerDraws needs at least one picture's answers")
        self._by_picture = dict(answers)
        self._pooled = tuple(answer for samples in answers.values() for answer in samples)
        self._choice = rng.choice
        self.agreement_known = all(answer.agrees is not None for answer in self._pooled)

    def draw(self, picture: str) -> EdgeAnswer:
        return self._choice(self._by_picture.get(picture) or self._pooled)


__all__ = ["AnswerDraws"]
