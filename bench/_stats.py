"""Timing and summary helpers shared by the benchmark areas (medians and p95 over many runs)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank on the sorted values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summary_ms(samples: list[float], digits: int = 3) -> str:
    """``median … ms   p95 … ms   (n=…)`` for samples in seconds."""
    ms = [s * 1000 for s in samples]
    return f"median {statistics.median(ms):7.{digits}f} ms   p95 {p95(ms):7.{digits}f} ms   (n={len(ms)})"


def timed(fn: Callable[[], object], n: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times, then ``n`` timed times; return the durations in seconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out
