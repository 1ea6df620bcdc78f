"""image-classification, object-detection, image-segmentation: parity with the transformers pipelines."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from localinfer import BadRequestError
from localinfer.media import decode_image
from tests.conftest import assert_close

SAMPLES = Path(__file__).parent.parent / "samples"
JPEG = (SAMPLES / "plane.jpg").read_bytes()


def _oracle(tiny, task, name):
    from transformers import pipeline

    return pipeline(task, model=str(tiny[name]))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("parameters", [{}, {"top_k": 2}, {"top_k": 3, "function_to_apply": "sigmoid"}])
def test_image_classification_equals_the_pipeline(engine, tiny, parameters):
    oracle = _oracle(tiny, "image-classification", "vit")
    expected = oracle(decode_image(JPEG), **parameters)
    payload = {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters}
    assert_close(engine.query("tiny/vit", payload), expected)


def test_image_classification_raw_body_and_other_formats(engine, tiny):
    oracle = _oracle(tiny, "image-classification", "vit")
    image = decode_image(JPEG)
    assert_close(engine.query("tiny/vit", JPEG), oracle(image))
    assert_close(engine.query("tiny/vit", _png(image)), oracle(image))


@pytest.mark.parametrize("name", ["yolos", "detr"])
@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5])
def test_object_detection_equals_the_pipeline(engine, tiny, name, threshold):
    oracle = _oracle(tiny, "object-detection", name)
    expected = oracle(decode_image(JPEG), threshold=threshold)
    answer = engine.query(
        f"tiny/{name}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": {"threshold": threshold}}
    )
    assert_close(answer, expected)
    for entry in answer:
        box = entry["box"]
        assert all(isinstance(box[k], int) for k in ("xmin", "ymin", "xmax", "ymax"))
    if threshold == 0.0:
        assert answer


def _masks_equal(answer, expected, flipped: float = 0.0):
    """Labels and scores equal, masks equal pixel for pixel (up to a `flipped` share of tie flips)."""
    from PIL import Image

    assert len(answer) == len(expected)
    for ours, theirs in zip(answer, expected, strict=True):
        assert ours["label"] == theirs["label"]
        assert (ours["score"] is None) == (theirs["score"] is None)
        if theirs["score"] is not None:
            assert abs(ours["score"] - theirs["score"]) < 1e-4
        mask = Image.open(io.BytesIO(base64.b64decode(ours["mask"])))
        assert mask.mode == "L" and mask.size == theirs["mask"].size
        differ = np.mean(np.asarray(mask) != np.asarray(theirs["mask"]))
        assert differ <= flipped, differ


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("segformer", {}),
        ("mobilevit", {}),
        ("maskformer", {"subtask": "semantic"}),
        ("maskformer", {"subtask": "instance", "threshold": 0.0}),
        ("maskformer", {"subtask": "panoptic", "threshold": 0.0, "overlap_mask_area_threshold": 0.2}),
        ("maskformer", {"subtask": "panoptic", "threshold": 0.0, "mask_threshold": 0.3}),
    ],
)
def test_image_segmentation_equals_the_pipeline(engine, tiny, name, parameters):
    oracle = _oracle(tiny, "image-segmentation", name)
    expected = oracle(decode_image(JPEG), **parameters)
    answer = engine.query(f"tiny/{name}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    _masks_equal(answer, expected)
    assert answer or parameters.get("subtask") == "panoptic"  # the random MaskFormer finds no panoptic segment


@pytest.mark.parametrize("parameters", [{}, {"threshold": 0.5, "overlap_mask_area_threshold": 0.3}])
def test_detr_panoptic_equals_the_pipeline_but_for_tie_flips(engine, tiny, parameters):
    """The random model's queries are nearly tied, so a few pixels' argmax over queries may flip (shared notes)."""
    oracle = _oracle(tiny, "image-segmentation", "detr-panoptic")
    expected = oracle(decode_image(JPEG), **parameters)
    answer = engine.query("tiny/detr-panoptic", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    assert answer
    _masks_equal(answer, expected, flipped=0.001)


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
    ],
)
def test_bad_parameters_are_400(engine, model, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query(f"tiny/{model}", {"inputs": base64.b64encode(JPEG).decode(), "parameters": parameters})
    assert field in info.value.body["error"]
