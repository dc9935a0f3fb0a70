"""Private Keras attributes segpipe depends on, fenced in this one module.

`tests/test_kerascompat.py` fails loudly when Keras changes any of them.
"""

from __future__ import annotations

from typing import Any


def variable_key(optimizer: Any, variable: Any) -> Any:
    """The key a Keras optimizer files `variable` under (a Keras variable, or the backend variable
    that `update_step` receives, mirrored components included). Keras' optimizers subclass API
    (`_get_variable_index`) rests on the same key; there is no public one."""
    return optimizer._var_key(variable)
