"""Labelled live traffic: Iris flowers measured the way today's clients measure them.

A model is trained and held out on one split of the Iris data; live traffic is rarely
that split. The pool draws rows of scikit-learn's Iris data (each labelled with its
flower's species), adds Gaussian noise (sd 0.15 cm) to every measurement and a drift to
one: petal width reads 0.15 cm wider, as if the clients had switched to a new measuring
instrument the training data never saw. On such rows two good models (the demo's stable,
C = 1, and its good candidate, C = 5) answer alike on ~98 % of them; a model that only
just passed its held-out test (C = 0.2) differs on ~6 %, mostly where versicolor meets
virginica.

Plain Python (``random``); scikit-learn is imported only to read its copy of the data.
Never import kserve here: this module runs inside locust.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

JITTER_SD = 0.15  # cm, every feature: hand measurements
PETAL_WIDTH_SHIFT = 0.15  # cm: the new instrument reads petal width this much wider
PETAL_WIDTH = 3  # column of petal width in (sepal length, sepal width, petal length, width)
FLOOR = 0.1  # cm: a jittered measurement is never below the smallest in the data set
DECIMALS = 2  # what an instrument shows


@dataclass(frozen=True)
class LabelledRows:
    rows: list[list[float]]
    labels: list[int]
    """The species id (0 setosa, 1 versicolor, 2 virginica) of each row's source flower."""


class DriftedIris:
    """Rows drawn with replacement from ``flowers``, jittered and drifted; deterministic
    for a given ``random.Random`` seed."""

    def __init__(
        self,
        flowers: Sequence[Sequence[float]],
        species: Sequence[int],
        *,
        jitter_sd: float = JITTER_SD,
        petal_width_shift: float = PETAL_WIDTH_SHIFT,
    ) -> None:
        if not flowers or len(flowers) != len(species):
            raise ValueError("the pool needs flowers, each with its species")
        if any(len(f) != 4 for f in flowers):
            raise ValueError("a flower has 4 measurements")
        if jitter_sd < 0:
            raise ValueError(f"jitter_sd must be >= 0, got {jitter_sd}")
        self.flowers = [tuple(float(v) for v in f) for f in flowers]
        self.species = [int(s) for s in species]
        self.jitter_sd = jitter_sd
        self.petal_width_shift = petal_width_shift

    @classmethod
    def from_iris(cls, **kwargs: float) -> DriftedIris:
        """All 150 flowers of scikit-learn's Iris data."""
        from sklearn.datasets import load_iris  # import cost only where the pool is used

        iris = load_iris()
        return cls(iris.data.tolist(), iris.target.tolist(), **kwargs)

    def measure(self, flower: Sequence[float], rng: random.Random) -> list[float]:
        """One flower as today's clients measure it."""
        row = [v + rng.gauss(0.0, self.jitter_sd) for v in flower]
        row[PETAL_WIDTH] += self.petal_width_shift
        return [round(max(FLOOR, v), DECIMALS) for v in row]

    def sample(self, rng: random.Random, batch: int) -> LabelledRows:
        rows, labels = [], []
        for _ in range(batch):
            index = rng.randrange(len(self.flowers))
            rows.append(self.measure(self.flowers[index], rng))
            labels.append(self.species[index])
        return LabelledRows(rows, labels)


__all__ = ["PETAL_WIDTH_SHIFT", "DriftedIris", "LabelledRows"]
