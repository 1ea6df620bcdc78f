"""What every benchmark checks before it reports a ratio (both sides answered the same), and `--quick`."""

from __future__ import annotations

import sys
from typing import Any

# `--quick`: tiny sizes and one repetition, to prove a script runs and its answers agree; its timings mean nothing.
QUICK = "--quick" in sys.argv[1:]


def plain(value: Any) -> Any:
    """An answer as plain JSON types: numpy scalars and arrays, tuples and PIL images (as their pixels) converted."""
    if hasattr(value, "tobytes") and hasattr(value, "mode"):  # a PIL image, e.g. a segmentation mask
        import numpy as np

        return np.asarray(value).tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def assert_same(ours: Any, theirs: Any, what: str, *, tol: float = 1e-4, rel: float = 1e-3, path: str = "$") -> None:
    """Fail loudly unless both sides answered the same: keys, labels, texts and ints equal, floats within `tol`
    absolutely and `rel` relatively (1e-6 floor). A ratio between two programs that answer differently means
    nothing, so every benchmark calls this before it reports one."""
    ours, theirs = plain(ours), plain(theirs)
    where = f"{what}: {path}"
    if isinstance(ours, float) or isinstance(theirs, float):
        if not (isinstance(ours, (int, float)) and isinstance(theirs, (int, float))):
            raise AssertionError(f"{where}: {ours!r} against {theirs!r}")
        diff = abs(ours - theirs)
        if diff > tol or diff > rel * max(abs(ours), abs(theirs)) + 1e-6:
            raise AssertionError(f"{where}: {ours} against {theirs}")
    elif isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.keys() != theirs.keys():
            raise AssertionError(f"{where}: keys {sorted(ours)} against {sorted(theirs)}")
        for key in ours:
            assert_same(ours[key], theirs[key], what, tol=tol, rel=rel, path=f"{path}.{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            raise AssertionError(f"{where}: {len(ours)} items against {len(theirs)}")
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, what, tol=tol, rel=rel, path=f"{path}[{i}]")
    elif ours != theirs:
        raise AssertionError(f"{where}: {ours!r} against {theirs!r}")


def results_name(name: str) -> str:
    """A `--quick` run writes `<name>-quick.json`, never the results file README quotes."""
    return f"{name}-quick" if QUICK else name
