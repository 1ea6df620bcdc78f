"""The score functions the pipelines apply to logits, once for every task (numpy, over the last axis)."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    """As transformers/pipelines/text_classification.py's softmax: shifted by the maximum, over the last axis."""
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def apply_function(function: str, logits: np.ndarray) -> np.ndarray:
    """`function_to_apply` as the pipelines take it: "sigmoid", "softmax" or "none"."""
    return {"sigmoid": sigmoid, "softmax": softmax, "none": lambda x: x}[function](logits)
