"""Post-processing of image models in numpy: the transformers pipelines' and image processors' rules without torch.

Image classification, object detection (DETR, YOLOS) and image segmentation (semantic: SegFormer, MobileViT, ...;
instance and panoptic: DETR, MaskFormer) are ported from `transformers/pipelines/image_classification.py`,
`object_detection.py`, `image_segmentation.py` and the `post_process_*` methods of
`transformers/models/{detr,yolos,maskformer,segformer,mobilevit}/image_processing_*.py`, which take torch tensors.
The resizes reproduce torch's CPU kernels (`aten/src/ATen/native/cpu/UpSampleKernel.cpp`) value for value, as torch
2.13's x86-64 build rounds them (with FMA), and `topk_unsorted` the order of `torch.topk(sorted=False)`, so that
masks equal the pipelines' pixel for pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .scores import apply_function, sigmoid, softmax

# torch's channels-last bilinear kernel computes 8 float lanes at once (measured on torch 2.13's x86-64 build, whose
# kernels are compiled with FMA); the channels left over go through a scalar loop that rounds differently
_LANES = 8
# torch's bilinear kernel for float inputs switches to its channels-last kernel for small outputs
# (`_use_vectorized_kernel_cond_2d`: output height + width <= 128)
_SMALL_OUTPUT = 128


def label_names(config: dict[str, Any], count: int) -> list[str]:
    """The names of `count` classes: the config's `id2label`, `LABEL_<id>` where it has none (as transformers)."""
    names = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [names.get(i, f"LABEL_{i}") for i in range(count)]


# --- resizes, as torch.nn.functional.interpolate computes them on the CPU --------------------------------------------


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once, as the FMA instructions torch's kernels are compiled to (float64 holds the
    product of two float32 exactly)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _linear_weights(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, ...]:
    """Source indices and weights along one axis: UpSample.h `compute_source_index_and_lambda`, in float32."""
    f32 = np.float32
    if in_size == out_size:
        index = np.arange(out_size)
        return index, index, np.ones(out_size, f32), np.zeros(out_size, f32)
    target = np.arange(out_size, dtype=f32)
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
        real = scale * target
    else:
        scale = f32(in_size) / f32(out_size)
        real = _fma(np.full(out_size, scale), target + f32(0.5), np.full(out_size, -0.5, f32))
        real = np.where(real < 0, f32(0), real)
    index0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lambda1 = np.clip(real - index0.astype(f32), f32(0), f32(1)).astype(f32)
    index1 = index0 + (index0 < in_size - 1)
    return index0, index1, f32(1) - lambda1, lambda1


def resize_bilinear(x: np.ndarray, size: tuple[int, int], *, align_corners: bool = False) -> np.ndarray:
    """`interpolate(x[None], size, mode="bilinear", align_corners=...)[0]` for a float32 (channels, height, width)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    channels, in_h, in_w = x.shape
    out_h, out_w = size
    h0, h1, lh0, lh1 = _linear_weights(in_h, out_h, align_corners)
    w0, w1, lw0, lw1 = _linear_weights(in_w, out_w, align_corners)
    lh0, lh1 = lh0[:, None], lh1[:, None]
    # a (1, C, 1, 1) tensor is also channels-last contiguous: torch then takes that kernel when C > 3
    if out_h + out_w <= _SMALL_OUTPUT or (channels > 3 and in_h == in_w == 1):
        top, bottom = x[:, h0, :], x[:, h1, :]
        a, b, c, d = top[:, :, w0], top[:, :, w1], bottom[:, :, w0], bottom[:, :, w1]
        return _bilinear_channels_last(a, b, c, d, lh0 * lw0, lh0 * lw1, lh1 * lw0, lh1 * lw1)
    # `cpu_upsample_generic`: along the width on the two rows, then between them, t0 * w0 + t1 * w1 each time.
    # The width pass is the same for every output row that reads an input row: done once per input row.
    rows = _fma(x[:, :, w0], lw0, x[:, :, w1] * lw1)
    out = np.empty((channels, out_h, out_w), dtype=np.float32)
    # one channel at a time, in buffers reused: the last FMA in float64 (see `_fma`)
    blend, other = np.empty((out_h, out_w)), np.empty((out_h, out_w), dtype=np.float32)
    lh0 = lh0.astype(np.float64)
    for channel in range(channels):
        np.take(rows[channel], h0, axis=0, out=other)
        np.multiply(other, lh0, out=blend)
        np.take(rows[channel], h1, axis=0, out=other)
        np.multiply(other, lh1, out=other)
        np.add(blend, other, out=blend)
        out[channel] = blend
    return out


def _bilinear_channels_last(a, b, c, d, w00, w01, w10, w11) -> np.ndarray:
    """`cpu_upsample_linear_channels_last`: the four corners weighted; its vector loop (whole groups of `_LANES`
    channels) and its scalar loop (the rest) sum them in different orders."""
    split = a.shape[0] - a.shape[0] % _LANES
    vector = _fma(a[:split], w00, _fma(b[:split], w01, _fma(d[:split], w11, c[:split] * w10)))
    scalar = _fma(d[split:], w11, _fma(c[split:], w10, _fma(a[split:], w00, b[split:] * w01)))
    return np.concatenate([vector, scalar])


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`interpolate(x[None], size, mode="nearest")[0]` for a (channels, height, width) array."""

    def source(in_size: int, out_size: int) -> np.ndarray:
        scale = np.float32(in_size) / np.float32(out_size)
        index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(index, in_size - 1)

    return x[:, source(x.shape[1], size[0])][:, :, source(x.shape[2], size[1])]


# --- torch.topk(sorted=False) ------------------------------------------------------------------------------------


def topk_unsorted(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`torch.topk(values, k, sorted=False)` of a 1-D array on the CPU, in the order torch returns them.

    torch (aten/src/ATen/native/TopKImpl.h) runs `std::partial_sort` when k * 64 <= n, else `std::nth_element`,
    on (value, index) pairs: the order of the k it returns is what libstdc++'s algorithms leave. They are ported
    here step for step (bits/stl_algo.h, bits/stl_heap.h); libc++ (macOS) would order them otherwise.
    """
    items = [(float(v), i) for i, v in enumerate(values)]
    if k * 64 <= len(items):
        _partial_sort(items, k)
    else:
        _nth_element(items, k - 1)
    top = items[:k]
    return np.array([v for v, _ in top], dtype=values.dtype), np.array([i for _, i in top], dtype=np.int64)


def _before(x: tuple[float, int], y: tuple[float, int]) -> bool:
    """torch's comparison for the largest k: NaN first, then greater values."""
    return (np.isnan(x[0]) and not np.isnan(y[0])) or x[0] > y[0]


def _nth_element(a: list, nth: int) -> None:
    first, last = 0, len(a)
    if first == last or nth == last:
        return
    depth = 2 * ((last - first).bit_length() - 1)  # std::__lg(n) * 2
    while last - first > 3:
        if depth == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth -= 1
        cut = _partition_pivot(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


def _partition_pivot(a: list, first: int, last: int) -> int:
    mid = first + (last - first) // 2
    _median_to_first(a, first, first + 1, mid, last - 1)
    return _unguarded_partition(a, first + 1, last, first)


def _median_to_first(a: list, result: int, x: int, y: int, z: int) -> None:
    if _before(a[x], a[y]):
        if _before(a[y], a[z]):
            pick = y
        elif _before(a[x], a[z]):
            pick = z
        else:
            pick = x
    elif _before(a[x], a[z]):
        pick = x
    elif _before(a[y], a[z]):
        pick = z
    else:
        pick = y
    a[result], a[pick] = a[pick], a[result]


def _unguarded_partition(a: list, first: int, last: int, pivot: int) -> int:
    while True:
        while _before(a[first], a[pivot]):
            first += 1
        last -= 1
        while _before(a[pivot], a[last]):
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _insertion_sort(a: list, first: int, last: int) -> None:
    if first == last:
        return
    for i in range(first + 1, last):
        value = a[i]
        if _before(value, a[first]):
            a[first + 1 : i + 1] = a[first:i]
            a[first] = value
        else:
            j = i
            while _before(value, a[j - 1]):
                a[j] = a[j - 1]
                j -= 1
            a[j] = value


def _partial_sort(a: list, k: int) -> None:
    _heap_select(a, 0, k, len(a))
    end = k
    while end > 1:  # std::__sort_heap
        end -= 1
        _pop_heap(a, 0, end, end)


def _heap_select(a: list, first: int, middle: int, last: int) -> None:
    _make_heap(a, first, middle)
    for i in range(middle, last):
        if _before(a[i], a[first]):
            _pop_heap(a, first, middle, i)


def _make_heap(a: list, first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(a, first, parent, length, a[first + parent])
        if parent == 0:
            return
        parent -= 1


def _pop_heap(a: list, first: int, last: int, result: int) -> None:
    value = a[result]
    a[result] = a[first]
    _adjust_heap(a, first, 0, last - first, value)


def _adjust_heap(a: list, first: int, hole: int, length: int, value: tuple) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _before(a[first + child], a[first + child - 1]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # std::__push_heap
    while hole > top and _before(a[first + parent], value):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


# --- image classification ----------------------------------------------------------------------------------------


def classify(
    logits: np.ndarray, config: dict[str, Any], *, top_k: int, function_to_apply: str | None
) -> list[dict[str, Any]]:
    """One image's logits -> `[{label, score}]`, best first (pipelines/image_classification.py: postprocess)."""
    names = label_names(config, len(logits))
    num_labels = len(names)
    if function_to_apply is None:
        problem = config.get("problem_type")
        if problem == "multi_label_classification" or num_labels == 1:
            function_to_apply = "sigmoid"
        elif problem == "single_label_classification" or num_labels > 1:
            function_to_apply = "softmax"
        else:
            function_to_apply = config.get("function_to_apply") or "none"
    scores = apply_function(function_to_apply, logits)
    ranked = sorted(
        ({"label": names[i], "score": score.item()} for i, score in enumerate(scores)),
        key=lambda entry: entry["score"],
        reverse=True,
    )
    return ranked[: min(top_k, num_labels)]


# --- object detection --------------------------------------------------------------------------------------------


def detect(
    logits: np.ndarray, pred_boxes: np.ndarray, image_size: tuple[int, int], config: dict[str, Any], threshold: float
) -> list[dict[str, Any]]:
    """One image's DETR/YOLOS outputs -> `[{score, label, box}]`, boxes in pixels of the image.

    DetrImageProcessor / YolosImageProcessor.post_process_object_detection, then
    pipelines/object_detection.py: postprocess (`_get_bounding_box` truncates to int).
    """
    names = label_names(config, logits.shape[-1] - 1)
    probabilities = softmax(logits)[:, :-1]  # the last class is "no object"
    scores, classes = probabilities.max(-1), probabilities.argmax(-1)
    centre_x, centre_y, width, height = np.moveaxis(pred_boxes, -1, 0)
    corners = np.stack(
        [centre_x - 0.5 * width, centre_y - 0.5 * height, centre_x + 0.5 * width, centre_y + 0.5 * height], axis=-1
    )
    image_h, image_w = image_size
    corners = corners * np.array([image_w, image_h, image_w, image_h], dtype=np.float32)
    keep = scores > threshold
    return [
        {
            "score": score.item(),
            "label": names[int(label)],
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box.astype(np.int32).tolist(), strict=True)),
        }
        for score, label, box in zip(scores[keep], classes[keep], corners[keep], strict=True)
    ]


# --- image segmentation ------------------------------------------------------------------------------------------


def semantic_segmentation(outputs: dict[str, np.ndarray], image_size: tuple[int, int]) -> np.ndarray:
    """One image's class map (height, width): from per-pixel logits (SegFormer, MobileViT, ...), or from the
    queries of DETR / MaskFormer (their image processors' `post_process_semantic_segmentation`)."""
    if "logits" in outputs and outputs["logits"].ndim == 4:
        scores = outputs["logits"][0]
    else:
        class_logits, mask_logits = _queries(outputs)
        classes = softmax(class_logits)[:, :-1]  # without the null class
        scores = np.einsum("qc,qhw->chw", classes, sigmoid(mask_logits))
    return resize_bilinear(scores, image_size).argmax(0)


def _queries(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The first image's class logits (queries, classes + 1) and mask logits (queries, height, width)."""
    if "class_queries_logits" in outputs:  # MaskFormer
        return outputs["class_queries_logits"][0], outputs["masks_queries_logits"][0]
    return outputs["logits"][0], outputs["pred_masks"][0]  # DETR


def panoptic_segmentation(
    outputs: dict[str, np.ndarray],
    image_size: tuple[int, int],
    *,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment map and segments of DETR and MaskFormer queries, no label fused: their image processors'
    `post_process_panoptic_segmentation` (and DETR's `post_process_instance_segmentation`, the same steps)."""
    class_logits, mask_logits = _queries(outputs)
    num_labels = class_logits.shape[-1] - 1
    probabilities = softmax(class_logits)
    scores, labels = probabilities.max(-1), probabilities.argmax(-1)
    keep = (labels != num_labels) & (scores > threshold)  # remove_low_and_no_objects
    if not keep.any():
        return np.full(image_size, -1, dtype=np.int32), []
    return _compute_segments(
        sigmoid(mask_logits[keep]), scores[keep], labels[keep], mask_threshold, overlap_mask_area_threshold, image_size
    )


def _compute_segments(
    mask_probs: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """image_processing_detr.py `compute_segments` (and `check_segment_validity`), no label fused."""
    segmentation = np.zeros(image_size, dtype=np.int32)
    mask_probs = resize_bilinear(mask_probs, image_size) * scores[:, None, None]
    mask_labels = mask_probs.argmax(0)
    segments = []
    for k, label in enumerate(labels.tolist()):
        mask = mask_labels == k
        area = np.count_nonzero(mask)
        original_area = np.count_nonzero(mask_probs[k] >= mask_threshold)
        # torch divides the two int64 counts into float32
        if (
            area
            and original_area
            and (np.float32(area) / np.float32(original_area)).item() > overlap_mask_area_threshold
        ):
            segment_id = len(segments) + 1
            segmentation[mask] = segment_id
            segments.append({"id": segment_id, "label_id": label, "score": round(scores[k].item(), 6)})
    return segmentation, segments


def maskformer_instance_segmentation(
    outputs: dict[str, np.ndarray], image_size: tuple[int, int], *, threshold: float
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment map and segments: MaskFormerImageProcessor.post_process_instance_segmentation (later instances
    overwrite earlier ones where they overlap, as there)."""
    class_logits, mask_logits = _queries(outputs)
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    scores = softmax(class_logits)[:, :-1]
    top_scores, top_indices = topk_unsorted(scores.reshape(-1), num_queries)
    labels = top_indices % num_classes
    mask_logits = mask_logits[top_indices // num_classes]
    masks = (mask_logits > 0).astype(np.float32)
    flat = masks.reshape(num_queries, -1)
    mask_scores = (sigmoid(mask_logits).reshape(num_queries, -1) * flat).sum(1) / (flat.sum(1) + np.float32(1e-6))
    final_scores = top_scores * mask_scores
    masks = resize_nearest(masks, image_size)
    segmentation = np.full(image_size, -1, dtype=np.int32)
    segments = []
    for j in range(num_queries):
        score = final_scores[j].item()
        if masks[j].any() and score >= threshold:
            segmentation[masks[j] == 1] = len(segments)
            segments.append({"id": len(segments), "label_id": int(labels[j]), "score": round(score, 6)})
    return segmentation, segments


# which instance / panoptic port serves each image processor (the pipeline calls the processor's own methods)
_INSTANCE = {"DetrImageProcessor": "detr", "MaskFormerImageProcessor": "maskformer"}


def segment(
    outputs: dict[str, np.ndarray],
    processor: Any,
    image_size: tuple[int, int],
    *,
    subtask: str | None,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
) -> list[tuple[int, float | None, np.ndarray]]:
    """One image's segments as (label id, score or None, uint8 mask 0/255 the size of the image).

    The subtask is chosen as pipelines/image_segmentation.py: postprocess does: panoptic, else instance, else
    semantic, among those the model's image processor has. Raises ValueError for a subtask it has none of.
    """
    family = _INSTANCE.get(type(processor).__name__)
    instance_like = None
    if subtask in {"panoptic", None} and hasattr(processor, "post_process_panoptic_segmentation"):
        instance_like = "panoptic"
    elif subtask in {"instance", None} and hasattr(processor, "post_process_instance_segmentation"):
        instance_like = "instance"
    if instance_like is not None:
        if family is None:
            raise ValueError(f"{instance_like} segmentation with {type(processor).__name__} is not supported")
        if instance_like == "instance" and family == "maskformer":
            segmentation, segments = maskformer_instance_segmentation(outputs, image_size, threshold=threshold)
        else:
            segmentation, segments = panoptic_segmentation(
                outputs,
                image_size,
                threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
            )
        return [
            (s["label_id"], s["score"], (segmentation == s["id"]).astype(np.uint8) * np.uint8(255)) for s in segments
        ]
    if subtask in {"semantic", None} and hasattr(processor, "post_process_semantic_segmentation"):
        classes = semantic_segmentation(outputs, image_size)
        return [(int(c), None, (classes == c).astype(np.uint8) * np.uint8(255)) for c in np.unique(classes)]
    raise ValueError(f"Subtask {subtask} is not supported for this model")
