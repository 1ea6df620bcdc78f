"""Shared benchmark helpers: timing and reporting. Benchmarks are scripts, never timed tests."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Every benchmark imports this module first: localinfer (this checkout's) switches off the telemetry and the Hub
# access of onnxruntime, huggingface_hub and transformers before any benchmark imports them.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from localinfer.offline import go_offline  # noqa: E402

go_offline()

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], object], *, repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn`, `repeat` times after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def short_sentences(n: int) -> list[str]:
    """`n` distinct short sentences (5-10 words), deterministic."""
    subjects = ["The cat", "A happy person", "My neighbour", "The old dog", "Our team", "This model", "A child"]
    verbs = ["likes", "watches", "finds", "paints", "reads about", "talks to", "dreams of"]
    objects = ["the sunny day", "a red bicycle", "the quiet river", "an open book", "the city lights", "cold tea"]
    tails = ["today", "every morning", "in the park", "at night", "with a smile", "again"]
    out = []
    i = 0
    while len(out) < n:
        out.append(f"{subjects[i % 7]} {verbs[(i // 7) % 7]} {objects[(i // 49) % 6]} {tails[(i // 294) % 6]} #{i}")
        i += 1
    return out


def save(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    return path
