"""Shared fixtures: tiny models built once per session, engines on the ONNX and PyTorch routes."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from localinfer import LocalInference  # noqa: E402
from tests.compare import assert_close, is_close, plain  # noqa: E402, F401  (the tests import them from here)
from tests.fixtures.tiny_models import build_all, write_models_toml  # noqa: E402

SENTENCES = [
    "That is a happy person",
    "Today is a sunny day",
    "My name is Sarah and I live in London",
    "unknown words: zebra quokka",
    "",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    """One LOCALINFER_HOME for the session, so each tiny model is exported once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def engine(tiny, home, tmp_path_factory) -> LocalInference:
    toml = write_models_toml(tmp_path_factory.mktemp("onnx") / "models.toml", tiny)
    return LocalInference(toml, home)


@pytest.fixture(scope="session")
def torch_engine(tiny, home, tmp_path_factory) -> LocalInference:
    toml = write_models_toml(tmp_path_factory.mktemp("torch") / "models.toml", tiny, backend="torch")
    return LocalInference(toml, home)


_DROP = object()


def assert_informative(
    answer: Callable[[Any, dict], Any],
    inputs: Any,
    parameters: dict,
    *,
    other_inputs: Any,
    changes: dict | None = None,
    fixed: tuple[str, ...] = (),
    tol: float = 1e-4,
    same: Callable[[Any, Any], bool] | None = None,
) -> Any:
    """Prove that a parity case can fail: the oracle's answer to (`inputs`, `parameters`) must differ (beyond the
    parity tolerance) from its answer to `other_inputs`, and from its answer with each tested parameter changed:
    set to `changes[name]` when given, else dropped (the parameter ignored); the `fixed` ones only pin a setting
    (`do_sample: false`) and are not varied. A fixture that answers the same thing
    whatever it is asked lets every bug pass. Returns the oracle's answer. `same` replaces the comparison (for
    answers that are not JSON, such as masks)."""
    same = same or (lambda a, b: is_close(a, b, tol))
    expected = answer(inputs, dict(parameters))
    assert not same(answer(other_inputs, dict(parameters)), expected), (
        f"the oracle answers the same for {other_inputs!r} as for {inputs!r}: the input is not tested"
    )
    for name, value in {**{k: _DROP for k in parameters if k not in fixed}, **(changes or {})}.items():
        variant = {k: v for k, v in parameters.items() if k != name}
        if value is not _DROP:
            variant[name] = value
        assert not same(answer(inputs, variant), expected), (
            f"the oracle answers the same with {variant!r} as with {parameters!r}: {name} is not tested"
        )
    return expected
