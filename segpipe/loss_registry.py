"""The losses by name, importable without Keras (config validation takes the names from here).

`segpipe.losses.build_loss` builds each of them; adding a loss means one entry
here and one builder there (checked when `segpipe.losses` is imported).
"""

from __future__ import annotations

LOSSES: dict[str, str] = {
    "sce": "per-pixel cross-entropy",
    "dice": "soft Dice",
    "sce+dice": "cross-entropy + dice_weight x soft Dice",
    "focal": "focal loss (focal_gamma; 0 = cross-entropy)",
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
DEFAULT_LOSS = "sce+dice"
