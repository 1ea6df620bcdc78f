"""Long audio for CTC models: overlapping chunks, and the logits frames of each kept once when stitching.

A numpy port of transformers/pipelines/automatic_speech_recognition.py (4.57): `chunk_samples` follows
`AutomaticSpeechRecognitionPipeline.preprocess` (chunk and stride lengths in samples, rounded to the model's
samples-per-frame ratio), `chunk_iter` follows `chunk_iter`, `rescale_stride` is `rescale_stride` (what `_forward`
does with a chunk's stride), and `strip_stride` is the cut `postprocess` makes before concatenating the chunks'
frames. Each chunk's edges (the stride) are seen by the model, for context, but their frames are dropped, except
at the start and the end of the audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """Samples of one chunk, and its stride as the pipeline writes it: (samples, dropped left, dropped right)."""

    samples: np.ndarray
    stride: tuple[int, int, int]
    is_last: bool


def chunk_samples(
    chunk_length_s: float, stride_length_s: float | None, sampling_rate: int, align_to: int
) -> tuple[int, int, int]:
    """(chunk, left stride, right stride) in samples, each a multiple of `align_to` (samples per logits frame).

    The stride is a sixth of the chunk by default, as in the pipeline's `preprocess`.
    """
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6
    chunk_len = int(round(chunk_length_s * sampling_rate / align_to) * align_to)
    stride = int(round(stride_length_s * sampling_rate / align_to) * align_to)
    if chunk_len <= 2 * stride:  # the pipeline checks `<`; at `==` its chunk_iter fails on a range of step 0
        raise ValueError("Chunk length must be superior to stride length")
    return chunk_len, stride, stride


def chunk_iter(samples: np.ndarray, chunk_len: int, stride_left: int, stride_right: int) -> Iterator[Chunk]:
    """Chunks of `chunk_len` samples, each starting `chunk_len - stride_left - stride_right` after the previous."""
    length = samples.shape[0]
    step = chunk_len - stride_left - stride_right
    for start in range(0, length, step):
        end = start + chunk_len
        chunk = samples[start:end]
        left = 0 if start == 0 else stride_left
        is_last = end >= length
        right = 0 if is_last else stride_right
        if chunk.shape[0] > left:  # a last chunk inside the previous one's stride adds nothing
            yield Chunk(chunk, (chunk.shape[0], left, right), is_last)
        if is_last:
            break


def rescale_stride(stride: tuple[int, int, int], ratio: float) -> tuple[int, int, int]:
    """A stride in samples -> in logits frames (`ratio` frames per sample): (160000, 16000, 16000) -> (2000, 200, 200)
    at 1/80."""
    samples, left, right = stride
    frames = int(round(samples * ratio))
    return frames, int(round(left / samples * frames)), int(round(right / samples * frames))


def strip_stride(frames: np.ndarray, stride: tuple[int, int, int]) -> np.ndarray:
    """The frames (axis 1) of a chunk that are not its stride. The stride's count, not the array's length, places
    the right edge: a padded batch may hold more frames than the chunk has."""
    total, left, right = stride
    return frames[:, left : total - right]
