"""Latency histograms with fixed log-spaced buckets, shared by every router and the judge.

Fixed bucket bounds let two versions' histograms be compared bucket by bucket, and let the
judge count "requests slower than a threshold" exactly when the threshold is a bucket bound.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# Upper bounds in milliseconds: 0.5 ms .. ~120 s, each 15% above the last. The last bucket
# (index len(BOUNDS_MS)) holds everything slower.
_RATIO = 1.15
BOUNDS_MS: tuple[float, ...] = tuple(
    0.5 * _RATIO**i for i in range(int(math.log(240_000) / math.log(_RATIO)) + 1)
)
N_BUCKETS = len(BOUNDS_MS) + 1


def bucket_of(latency_ms: float) -> int:
    return bisect.bisect_left(BOUNDS_MS, latency_ms)


def empty() -> list[int]:
    return [0] * N_BUCKETS


def quantile(buckets: Sequence[int], q: float) -> float:
    """The q-quantile in ms, interpolated log-linearly inside its bucket; nan when empty."""
    total = sum(buckets)
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            upper = BOUNDS_MS[min(index, len(BOUNDS_MS) - 1)]
            lower = BOUNDS_MS[index - 1] if 0 < index <= len(BOUNDS_MS) else upper / _RATIO
            share = (rank - seen) / count
            return float(lower * (upper / lower) ** share)
        seen += count
    return BOUNDS_MS[-1]


def count_above(buckets: Sequence[int], threshold_bucket: int) -> int:
    """Requests in buckets strictly above `threshold_bucket` (slower than its upper bound)."""
    return int(sum(buckets[threshold_bucket + 1 :]))


def count_slower(buckets: Sequence[int], latency_ms: float) -> float:
    """Requests slower than `latency_ms`: every request of the buckets above the one holding it,
    and of that bucket the share above it, taking latencies as spread log-uniformly inside it
    (as `quantile` does). A bound between two bucket bounds is then counted as it was declared,
    not rounded to the 15% grid."""
    index = bucket_of(latency_ms)
    if index >= len(BOUNDS_MS):
        return float(buckets[-1]) if latency_ms <= BOUNDS_MS[-1] else 0.0
    upper = BOUNDS_MS[index]
    lower = BOUNDS_MS[index - 1] if index > 0 else upper / _RATIO
    share = math.log(upper / max(latency_ms, lower)) / math.log(upper / lower)
    return float(sum(buckets[index + 1 :])) + min(1.0, max(0.0, share)) * buckets[index]
