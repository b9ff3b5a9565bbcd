"""The empty arrays the hot path returns for "nothing here" (no history, no due purchases, no
candidates), made once: a call that has nothing allocates nothing. Never written to."""

from __future__ import annotations

import numpy as np

NO_ROWS = np.zeros(0, dtype=np.int64)
NO_WEIGHTS = np.zeros(0, dtype=np.float32)
NO_F64 = np.zeros(0, dtype=np.float64)
for _array in (NO_ROWS, NO_WEIGHTS, NO_F64):
    _array.flags.writeable = False
