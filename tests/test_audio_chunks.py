"""localinfer.audio_chunks against the functions of transformers' speech recognition pipeline it ports."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import Wav2Vec2FeatureExtractor
from transformers.pipelines import automatic_speech_recognition as asr

from localinfer.audio_chunks import chunk_iter, chunk_samples, rescale_stride, strip_stride


@pytest.mark.parametrize(
    ("length", "chunking"),
    [
        (16000 * 41, (5.0, None)),
        (16000 * 41 + 37, (7.3, 1.7)),
        (16000 * 30, (10.0, 0.0)),
        (16000 * 9, (10.0, 2.0)),  # one chunk, shorter than the chunk length
        (36000, (2.0, 0.5)),  # a last chunk shorter than the others
        (16000 * 20, (5.0, 1.25)),  # the clip ends where a chunk ends
    ],
)
def test_chunks_as_the_pipeline(length, chunking):
    """The pipeline's chunks of a clip (`preprocess` rounding the lengths to 80 samples, `chunk_iter` cutting):
    the same samples, strides and last flags, and the same logits frames kept (`rescale_stride`, then the cut of
    `postprocess`)."""
    chunk_length_s, stride_length_s = chunking
    samples = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=False)
    lengths = chunk_samples(chunk_length_s, stride_length_s, 16000, 80)
    stride = chunk_length_s / 6 if stride_length_s is None else stride_length_s
    assert lengths == tuple(int(round(s * 16000 / 80) * 80) for s in (chunk_length_s, stride, stride))
    expected = list(asr.chunk_iter(samples, extractor, *lengths))
    found = list(chunk_iter(samples, *lengths))
    assert [(c.stride, c.is_last) for c in found] == [(e["stride"], e["is_last"]) for e in expected]
    for chunk, item in zip(found, expected, strict=True):
        np.testing.assert_array_equal(chunk.samples, item["input_values"][0].numpy())
        frames = np.arange(int(round(chunk.stride[0] / 80)) + 3)[None]  # a padded batch's extra frames are cut too
        assert rescale_stride(chunk.stride, 1 / 80) == asr.rescale_stride([item["stride"]], 1 / 80)[0]
        total, left, right = rescale_stride(chunk.stride, 1 / 80)
        np.testing.assert_array_equal(strip_stride(frames, (total, left, right)), frames[:, left : total - right])
    assert sum(c.stride[0] - c.stride[1] - c.stride[2] for c in found) == length  # every sample kept once


@pytest.mark.parametrize("stride_length_s", [1.5, 1.0])
def test_strides_that_fill_the_chunk_are_refused(stride_length_s):
    """The pipeline refuses strides longer than the chunk; strides that fill it exactly leave chunks that never
    advance (its chunk_iter fails on a range of step 0)."""
    with pytest.raises(ValueError, match="Chunk length must be superior to stride length"):
        chunk_samples(2.0, stride_length_s, 16000, 80)
