"""What an Oxford-IIIT Pet image id says: `<breed>_<n>`."""

from __future__ import annotations

import re


def breed_of(example_id: str) -> str:
    """`Abyssinian_82` -> `Abyssinian`; `american_bulldog_1` -> `american_bulldog`."""
    m = re.fullmatch(r"(.+)_\d+", example_id)
    return m.group(1) if m else example_id
