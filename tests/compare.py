"""One comparison of two answers, for the tests (parity with an oracle) and the benchmarks (both sides answered the
same before a ratio). Plain Python: no pytest, so a benchmark script can import it."""

from __future__ import annotations

from typing import Any


def _close(actual: float, expected: float, tol: float, rel: float) -> bool:
    """Within `tol` absolutely and, for small values, within `rel` of their size (1e-6 floor): an absolute 1e-4
    alone lets a score of 0.003 be off by 3 %."""
    diff = abs(actual - expected)
    return diff <= tol and diff <= rel * max(abs(actual), abs(expected)) + 1e-6


def assert_close(actual, expected, tol: float = 1e-4, path: str = "$", *, rel: float = 1e-3) -> None:
    """Recursive equality: strings, ints and keys equal, floats within `tol` and `rel` (the oracle may give numpy
    floats)."""
    if hasattr(expected, "item") and not isinstance(expected, (list, dict)):
        expected = expected.item()
    assert not hasattr(actual, "dtype"), f"{path}: {actual!r} is a numpy value, not JSON"
    if isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and isinstance(expected, (int, float)), f"{path}: {actual!r}"
        assert _close(actual, expected, tol, rel), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{path}: {actual!r} != {expected!r}"
        for key in expected:
            assert_close(actual[key], expected[key], tol, f"{path}.{key}", rel=rel)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{path}: length differs"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, tol, f"{path}[{i}]", rel=rel)
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def plain(value: Any) -> Any:
    """`value` as plain JSON types: numpy scalars and arrays (oracles answer them), tuples, and PIL images (as their
    pixels) converted."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tobytes") and hasattr(value, "mode"):  # a PIL image, e.g. a segmentation mask
        import numpy as np

        return np.asarray(value).tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist()
    return value


def is_close(actual, expected, tol: float = 1e-4, *, rel: float = 1e-3) -> bool:
    """Whether two answers (an oracle's included: numpy values allowed on both sides) agree within `assert_close`'s
    tolerance."""
    try:
        assert_close(plain(actual), plain(expected), tol, rel=rel)
    except AssertionError:
        return False
    return True
