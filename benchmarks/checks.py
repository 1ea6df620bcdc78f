"""What every benchmark checks before it reports a ratio (both sides answered the same), and `--quick`."""

from __future__ import annotations

import sys
from typing import Any

import common  # noqa: F401  first: the checkout on sys.path, the libraries kept offline

from tests.compare import assert_close, plain

# `--quick`: tiny sizes and one repetition, to prove a script runs and its answers agree; its timings mean nothing.
QUICK = "--quick" in sys.argv[1:]


def assert_same(ours: Any, theirs: Any, what: str, *, tol: float = 1e-4, rel: float = 1e-3) -> None:
    """Fail loudly unless both sides answered the same: keys, labels, texts and ints equal, floats within `tol`
    absolutely and `rel` relatively (1e-6 floor), as the tests compare. A ratio between two programs that answer
    differently means nothing, so every benchmark calls this before it reports one."""
    assert_close(plain(ours), plain(theirs), tol, f"{what}: $", rel=rel)


def results_name(name: str) -> str:
    """A `--quick` run writes `<name>-quick.json`, never the results file README quotes."""
    return f"{name}-quick" if QUICK else name
