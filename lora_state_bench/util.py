"""Small helpers shared by the scenarios: a timer, a median and a time-stamped log."""
from __future__ import annotations

import statistics
import time


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values):
    return statistics.median(values) if values else None


class Log:
    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.started = time.perf_counter()

    def __call__(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.perf_counter() - self.started:7.1f}s] {text}", flush=True)
