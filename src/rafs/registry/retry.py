"""When and how long to wait before trying a registry request again.

Retried: responses 408, 429, 500, 502, 503, 504 and dropped or refused connections.
Attempts are bounded; the wait doubles from `base_delay` up to `max_delay`, each wait drawn
between half and all of that (jitter, so parallel clients do not retry in step). A numeric
`Retry-After` from the server is honoured up to `max_delay`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included."""
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, failures: int, retry_after: str | None = None) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)
