"""The augmentation knobs: one definition of each one's names, default and range.

`segpipe.data.input.augment_batch` takes them as keywords (`option`), the
training config as `train.<field>` (`segpipe.config.TrainConfig`); both take
their defaults and ranges from here. Importable without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Knob:
    """One augmentation knob.

    `ge`, `le`, `lt`: the values `augment_batch` accepts. `config_le`: a tighter upper
    bound for the config, where the op accepts more than is sensible to ask for.
    """

    option: str  # keyword of augment_batch
    field: str  # TrainConfig field (train.<field>)
    default: float
    description: str
    ge: float = 0.0
    le: float | None = None
    lt: float | None = None
    config_le: float | None = None

    def expected(self) -> str:
        """The accepted range in words: `0 <= contrast < 1`."""
        upper = f" <= {self.le:g}" if self.le is not None else f" < {self.lt:g}" if self.lt is not None else ""
        return f"{self.ge:g} <= {self.option}{upper}" if upper else f"{self.option} >= {self.ge:g}"

    def accepts(self, value: float) -> bool:
        return (value >= self.ge and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt))

    def config_bounds(self) -> dict[str, float]:
        """Keyword arguments for the config's `pydantic.Field`."""
        bounds: dict[str, float] = {"ge": self.ge}
        if self.config_le is not None or self.le is not None:
            bounds["le"] = self.config_le if self.config_le is not None else self.le  # type: ignore[assignment]
        if self.lt is not None:
            bounds["lt"] = self.lt
        return bounds


KNOBS: tuple[Knob, ...] = (
    Knob("max_scale", "aug_max_scale", 1.25, "random zoom-in up to this factor (1: off)", ge=1.0, config_le=4.0),
    Knob("max_rotation_degrees", "aug_max_rotation", 10.0, "random rotation up to +- this, degrees",
         config_le=180.0),
    Knob("brightness", "aug_brightness", 0.1, "random brightness shift up to +- this", config_le=1.0),
    Knob("contrast", "aug_contrast", 0.2, "random contrast factor within 1 +- this", lt=1.0),
    Knob("hue", "aug_hue", 0.0, "random hue rotation up to +- this, degrees (0: off)", le=180.0),
    Knob("saturation", "aug_saturation", 0.0,
         "random saturation factor within 1 +- this (1: down to grey; 0: off)", le=1.0),
)
DEFAULTS: dict[str, float] = {k.option: k.default for k in KNOBS}
"""augment_batch's keyword defaults."""


def check_options(options: Mapping[str, Any]) -> None:
    """A ValueError naming every option out of its range (and what it expects), or naming unknown options."""
    known = {k.option: k for k in KNOBS}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown augment option(s) {', '.join(unknown)}; expected some of {', '.join(known)}")
    bad = [(known[name], value) for name, value in options.items() if not known[name].accepts(value)]
    if bad:
        raise ValueError("augment expects " + ", ".join(f"{k.expected()} (got {v!r})" for k, v in bad))
