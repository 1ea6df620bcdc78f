"""localinfer.vision_post: the numpy resizes and topk against torch's, on random arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localinfer.vision_post import resize_bilinear, resize_nearest, topk_unsorted

# (channels, height, width) -> (height, width): up- and down-sampling, both of torch's bilinear kernels (the generic
# one, and the channels-last one it takes when output height + width <= 128), channel counts below, at and above
# its 16 vector lanes, the size a 1x1 input, an unchanged axis
RESIZES = [
    ((5, 16, 16), (200, 300)),  # SegFormer's logits to an image: up
    ((3, 64, 64), (37, 150)),  # down one axis, up the other
    ((2, 300, 200), (70, 90)),  # down
    ((10, 16, 16), (40, 30)),  # channels-last kernel, scalar loop only
    ((20, 13, 17), (50, 61)),  # channels-last kernel, vector loop (8 lanes) and scalar loop
    ((32, 9, 11), (5, 7)),  # channels-last kernel, down
    ((6, 1, 1), (4, 5)),  # a 1x1 input is also channels-last contiguous
    ((4, 20, 30), (20, 70)),  # height unchanged
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("shape", "size"), RESIZES)
def test_bilinear_resize_equals_torch(shape, size, align_corners):
    x = np.random.default_rng(sum(shape) + sum(size)).standard_normal(shape).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=align_corners
    )[0].numpy()
    ours = resize_bilinear(x, size, align_corners=align_corners)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # the build whose rounding the port reproduces
        np.testing.assert_array_equal(ours, expected)
    else:
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    # what the segmentation reads from it: the argmax over channels, pixel for pixel
    np.testing.assert_array_equal(ours.argmax(0), expected.argmax(0))


@pytest.mark.parametrize(("shape", "size"), [((10, 16, 16), (200, 300)), ((4, 64, 64), (30, 50)), ((3, 7, 9), (14, 9))])
def test_nearest_resize_equals_torch(shape, size):
    x = (np.random.default_rng(3).standard_normal(shape) > 0).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="nearest")[0].numpy()
    np.testing.assert_array_equal(resize_nearest(x, size), expected)


@pytest.mark.parametrize(
    ("n", "k"),
    [
        (50, 10),  # MaskFormer's fixture: 10 queries x 5 classes (std::nth_element)
        (7, 3),
        (3, 2),  # too short to partition: insertion sort
        (1000, 15),  # k * 64 <= n: std::partial_sort
        (13300, 100),  # 100 queries x 133 classes (COCO panoptic)
        (400, 400),
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_topk_unsorted_orders_as_torch(n, k, ties):
    rng = np.random.default_rng(n + k)
    values = rng.integers(0, 5, n).astype(np.float32) if ties else rng.random(n, dtype=np.float32)
    expected_values, expected_indices = torch.from_numpy(values).topk(k, sorted=False)
    ours_values, ours_indices = topk_unsorted(values, k)
    np.testing.assert_array_equal(ours_indices, expected_indices.numpy())
    np.testing.assert_array_equal(ours_values, expected_values.numpy())


def _ordered(n: int) -> list[np.ndarray]:
    v = np.arange(n, dtype=np.float32)
    return [v, v[::-1].copy(), np.concatenate([v[::2], v[1::2]]), np.tile(np.float32([1, 2]), n // 2), v % 7]


@pytest.mark.parametrize("n", [64, 128, 200])
def test_topk_unsorted_of_ordered_inputs(n):
    """Ordered and periodic values: partitions that split badly (some exhaust introselect's depth limit, which
    falls back to a heap) and runs of equal values."""
    for values in _ordered(n):
        for k in (2, 3, n // 4, n // 2, n):
            expected_values, expected_indices = torch.from_numpy(values).topk(k, sorted=False)
            ours_values, ours_indices = topk_unsorted(values, k)
            np.testing.assert_array_equal(ours_indices, expected_indices.numpy())
            np.testing.assert_array_equal(ours_values, expected_values.numpy())
