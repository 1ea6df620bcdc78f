"""image-classification, object-detection, image-segmentation: parity with the transformers pipelines."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from localinfer import BadRequestError
from localinfer.media import decode_image
from tests.conftest import assert_close, assert_informative, is_close

SAMPLES = Path(__file__).parent.parent / "samples"
JPEG = (SAMPLES / "plane.jpg").read_bytes()
JPEG2 = (SAMPLES / "plane2.jpg").read_bytes()  # a second photo: each oracle answer must change with the image
IMAGE = decode_image(JPEG)
IMAGE2 = decode_image(JPEG2)


def _oracle(tiny, task, name):
    from transformers import pipeline

    return pipeline(task, model=str(tiny[name]))


def _answer(tiny, task, name):
    """The oracle as `assert_informative` calls it: (image, parameters) -> the pipeline's answer."""
    pipe = _oracle(tiny, task, name)
    return lambda image, parameters: pipe(image, **parameters)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("parameters", [{}, {"top_k": 2}, {"top_k": 3, "function_to_apply": "sigmoid"}])
def test_image_classification_equals_the_pipeline(engine, tiny, parameters):
    answer = _answer(tiny, "image-classification", "vit")
    expected = assert_informative(answer, IMAGE, parameters, other_inputs=IMAGE2)
    payload = {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters}
    assert_close(engine.query("tiny/vit", payload), expected)


def test_image_classification_raw_body_and_other_formats(engine, tiny):
    oracle = _oracle(tiny, "image-classification", "vit")
    assert_close(engine.query("tiny/vit", JPEG), oracle(IMAGE))
    assert_close(engine.query("tiny/vit", _png(IMAGE)), oracle(IMAGE))


THRESHOLDS = [0.0, 0.2, 0.5]


@pytest.mark.parametrize("name", ["yolos", "detr"])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_object_detection_equals_the_pipeline(engine, tiny, name, threshold):
    # each threshold is checked against the next one (0.5 against 0.0): dropping it would give the default, 0.5
    other = THRESHOLDS[(THRESHOLDS.index(threshold) + 1) % len(THRESHOLDS)]
    answer = _answer(tiny, "object-detection", name)
    parameters = {"threshold": threshold}
    expected = assert_informative(answer, IMAGE, parameters, other_inputs=IMAGE2, changes={"threshold": other})
    # distinct detections, so that answering one of them several times cannot pass
    assert expected and len({json.dumps(d, sort_keys=True, default=float) for d in expected}) == len(expected)
    answer = engine.query(
        f"tiny/{name}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": {"threshold": threshold}}
    )
    assert_close(answer, expected)
    for entry in answer:
        box = entry["box"]
        assert all(isinstance(box[k], int) for k in ("xmin", "ymin", "xmax", "ymax"))


def _segments_same(ours, theirs, flipped: float = 0.0) -> bool:
    """Labels equal, scores within the parity tolerance, masks (PIL images) equal pixel for pixel up to a `flipped`
    share of tie flips: the comparison `assert_informative` uses between two oracle answers."""
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs, strict=True):
        if a["label"] != b["label"] or (a["score"] is None) != (b["score"] is None):
            return False
        if a["score"] is not None and not is_close(a["score"], b["score"]):
            return False
        mask_a, mask_b = np.asarray(a["mask"]), np.asarray(b["mask"])
        if mask_a.shape != mask_b.shape or np.mean(mask_a != mask_b) > flipped:
            return False
    return True


def _masks_equal(answer, expected, flipped: float = 0.0):
    """Labels and scores equal, masks equal pixel for pixel (up to a `flipped` share of tie flips)."""
    from PIL import Image

    assert len(answer) == len(expected)
    for ours, theirs in zip(answer, expected, strict=True):
        assert ours["label"] == theirs["label"]
        assert (ours["score"] is None) == (theirs["score"] is None)
        if theirs["score"] is not None:
            assert_close(ours["score"], theirs["score"])
        mask = Image.open(io.BytesIO(base64.b64decode(ours["mask"])))
        assert mask.mode == "L" and mask.size == theirs["mask"].size
        differ = np.mean(np.asarray(mask) != np.asarray(theirs["mask"]))
        assert differ <= flipped, differ


@pytest.mark.parametrize(
    ("name", "parameters", "changes"),
    [
        ("segformer", {}, None),
        ("mobilevit", {}, None),
        ("maskformer", {"subtask": "semantic"}, None),
        ("maskformer", {"threshold": 0.0}, None),  # no subtask: the pipeline's order picks panoptic
        ("maskformer", {"subtask": "instance", "threshold": 0.0}, None),
        # MaskFormer's default subtask is panoptic: dropping it changes nothing, so it is checked against instance
        ("maskformer", {"subtask": "panoptic", "threshold": 0.0, "overlap_mask_area_threshold": 0.2}, "instance"),
        ("maskformer", {"subtask": "panoptic", "threshold": 0.0, "mask_threshold": 0.3}, "instance"),
    ],
)
def test_image_segmentation_equals_the_pipeline(engine, tiny, name, parameters, changes):
    answer = _answer(tiny, "image-segmentation", name)
    expected = assert_informative(
        answer,
        IMAGE,
        parameters,
        other_inputs=IMAGE2,
        changes=changes and {"subtask": changes},
        same=_segments_same,
    )
    assert expected
    if expected[0]["score"] is None:  # semantic: several classes, so no mask is the whole image
        assert len(expected) >= 2
    answer = engine.query(f"tiny/{name}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    _masks_equal(answer, expected)


@pytest.mark.parametrize("parameters", [{}, {"threshold": 0.5, "overlap_mask_area_threshold": 0.3}])
def test_detr_panoptic_equals_the_pipeline_but_for_tie_flips(engine, tiny, parameters):
    """A few pixels' argmax over queries may flip between runtimes where two queries' masks are nearly tied."""
    answer = _answer(tiny, "image-segmentation", "detr-panoptic")
    expected = assert_informative(
        answer, IMAGE, parameters, other_inputs=IMAGE2, same=lambda a, b: _segments_same(a, b, 0.001)
    )
    assert len(expected) >= 2
    answer = engine.query("tiny/detr-panoptic", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    _masks_equal(answer, expected, flipped=0.001)


@pytest.mark.parametrize(
    ("parameters", "changes"),
    [
        ({"subtask": "semantic"}, None),
        # DETR's instance segmentation is its panoptic one without fusing: checked against semantic instead
        ({"subtask": "instance", "threshold": 0.5}, {"subtask": "semantic"}),
    ],
)
def test_detr_panoptic_other_subtasks_equal_the_pipeline_but_for_tie_flips(engine, tiny, parameters, changes):
    answer = _answer(tiny, "image-segmentation", "detr-panoptic")
    expected = assert_informative(
        answer,
        IMAGE,
        parameters,
        other_inputs=IMAGE2,
        changes=changes,
        same=lambda a, b: _segments_same(a, b, 0.001),
    )
    assert len(expected) >= 2
    answer = engine.query("tiny/detr-panoptic", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    _masks_equal(answer, expected, flipped=0.001)


# the outputs each export has, which the post-processing reads by name
OUTPUTS = {
    "vit": ["logits"],
    "yolos": ["logits", "pred_boxes"],
    "detr": ["logits", "pred_boxes"],
    "segformer": ["logits"],
    "mobilevit": ["logits"],
    "maskformer": ["class_queries_logits", "masks_queries_logits"],
    "detr-panoptic": ["logits", "pred_masks"],
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_onnx_and_torch_runners_give_the_same_outputs(engine, torch_engine, name):
    """The export's outputs by name, and the PyTorch model's under the same names, equal."""
    from localinfer.tasks.vision import run_image

    onnx_model = engine.preload(f"tiny/{name}")
    assert onnx_model.runner.output_names == OUTPUTS[name]
    onnx_outputs, _ = run_image(onnx_model, JPEG, ())
    torch_outputs, _ = run_image(torch_engine.preload(f"tiny/{name}"), JPEG, ())
    for output in OUTPUTS[name]:
        np.testing.assert_allclose(onnx_outputs[output], torch_outputs[output], rtol=1e-3, atol=1e-4)


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name in ("vit", "yolos", "detr"):
        assert_close(torch_engine.query(f"tiny/{name}", JPEG), engine.query(f"tiny/{name}", JPEG))


@pytest.mark.parametrize("data", [b"\xff\xd8 broken jpeg", b"plain text"])
def test_undecodable_image_is_400(engine, data):
    with pytest.raises(BadRequestError, match="not an image"):
        engine.query("tiny/vit", data)


@pytest.mark.parametrize(
    ("model", "parameters", "field"),
    [
        ("vit", {"top_k": 0}, "parameters.top_k"),
        ("yolos", {"threshold": 1.5}, "parameters.threshold"),
        ("segformer", {"subtask": "everything"}, "parameters.subtask"),
        ("segformer", {"mask_threshold": -1}, "parameters.mask_threshold"),
        ("segformer", {"overlap_mask_area_threshold": 2}, "parameters.overlap_mask_area_threshold"),
        ("segformer", {"subtask": "panoptic"}, "parameters.subtask"),  # SegFormer's processor has no panoptic
    ],
)
def test_bad_parameters_are_400(engine, model, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query(f"tiny/{model}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    assert field in info.value.body["error"]
