"""A model's calibrated thresholds: part of the model, never of the code that uses it.

Cosine similarities mean different things under different embedders, so every model
version carries its own three thresholds, fitted for it:

* ``verify``: two faces are the same person at or above it (``faces verify``, ``/verify``);
* ``cluster``: Chinese Whispers joins two faces at or above it (pool re-clustering);
* ``assign``: a new face joins the identity whose medoid is at least this similar.

A registered model version keeps them as MLflow version tags (:meth:`Thresholds.to_tags`);
the pretrained local model's calibration lives in ``params.yaml`` (``verify.threshold``,
``cluster.threshold``, ``identities.assign_threshold``), read by :meth:`Thresholds.from_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

TAG_PREFIX = "faces.threshold."
NAMES = ("verify", "cluster", "assign")


class UncalibratedModelError(ValueError):
    """A model version carries no thresholds: calibrate it before using it."""


@dataclass(frozen=True)
class Thresholds:
    """Cosine similarity thresholds of one model (each in [-1, 1])."""

    verify: float
    cluster: float
    assign: float

    def __post_init__(self) -> None:
        for name in NAMES:
            value = float(getattr(self, name))
            if not -1.0 <= value <= 1.0:
                raise ValueError(f"threshold {name} is a cosine similarity in [-1, 1]; got {value}")
            object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_tags(self) -> dict[str, str]:
        """MLflow model-version tags (``faces.threshold.verify`` ...)."""
        return {f"{TAG_PREFIX}{name}": repr(float(value)) for name, value in self.as_dict().items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Thresholds | None:
        """The thresholds in a version's tags; None when it has none (not calibrated)."""
        if not all(f"{TAG_PREFIX}{name}" in tags for name in NAMES):
            return None
        return cls(**{name: float(tags[f"{TAG_PREFIX}{name}"]) for name in NAMES})

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> Thresholds:
        return cls(**{name: float(values[name]) for name in NAMES})

    @classmethod
    def from_settings(cls, settings) -> Thresholds:
        """The pretrained local model's calibration, from ``params.yaml``."""
        return cls(verify=settings.verify.threshold, cluster=settings.cluster.threshold,
                   assign=settings.identities.assign_threshold)
