"""image-classification, object-detection, image-segmentation: the body is an image, decoded with Pillow.

One ONNX Runtime session (or the PyTorch model) runs the model; the model's `transformers` image processor
prepares the pixels (numpy, no torch) and `localinfer.vision_post` turns the outputs into the pipelines' answers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from .. import vision_post
from ..errors import BadRequestError
from ..imports import transformers_ready
from ..media import decode_image, encode_mask
from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .audio import ClassificationParameters
from .base import Parameters, Task, run_stacked


def image_processor(model: LoadedModel) -> Any:
    """The model's image processor, loaded once per model."""
    key = ("image_processor",)
    if key not in model.state:
        transformers_ready()
        from transformers import AutoImageProcessor

        # the slow processors: numpy; the fast ones need torch
        model.state[key] = AutoImageProcessor.from_pretrained(model.files, use_fast=False)
    return model.state[key]


def run_image(model: LoadedModel, data: bytes, outputs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], Any]:
    """Decode the image, prepare it with the image processor, run the model: its outputs and the image."""
    feeds, image = prepare_image(model, data)
    return model.runner.run(feeds, outputs), image


def prepare_image(model: LoadedModel, data: bytes) -> tuple[dict[str, np.ndarray], Any]:
    """Decode the image and prepare it with the image processor: the model's inputs (a batch of one) and the image."""
    image = decode_image(data)
    processor = image_processor(model)
    # The channel axis given, not guessed: the processors (and so the pipelines, which do not give it) take a 1x1
    # image, or a 2000x3 one, for channels-first.
    try:
        features = processor(images=image, return_tensors="np", input_data_format="channels_last")
    except ValueError as exc:
        raise _cannot_prepare(processor, image.width, image.height, exc) from None
    return {name: np.asarray(value) for name, value in features.items()}, image


def _cannot_prepare(processor: Any, width: int, height: int, exc: ValueError) -> BadRequestError:
    """A 400 that says why the processor refused the image. DETR's and YOLOS's processors resize to a shortest edge
    unless the longest would pass its bound, then to the longest: a 3x2000 image under `{"shortest_edge": 64,
    "longest_edge": 96}` becomes 0x96 (`get_size_with_aspect_ratio` in image_processing_detr.py rounds 96 * 3 / 2000
    to 0; YOLOS's also floors each side to a multiple of 16, so its real checkpoints' 1333 gives 3x2000 a width of 0
    too), and `resize` refuses an empty image. The transformers pipeline raises the same ValueError on it."""
    size = getattr(processor, "size", None) or {}
    # the processor's own module function (DETR, YOLOS and their kin define one), on a zero-copy stand-in
    resize_to = getattr(sys.modules.get(type(processor).__module__), "get_resize_output_image_size", None)
    if resize_to is not None and "shortest_edge" in size and "longest_edge" in size:
        try:
            stand_in = np.broadcast_to(np.zeros(1, np.uint8), (height, width, 3))
            new_height, new_width = resize_to(
                stand_in, size=size["shortest_edge"], max_size=size["longest_edge"], input_data_format="channels_last"
            )
        except Exception:  # another module's function of that name: the plain message below
            new_height = new_width = 1
        if min(new_height, new_width) < 1:
            return BadRequestError(
                f"inputs: this model's image processor resizes a {width}x{height} image to {new_width}x{new_height} "
                f"pixels (its size: shortest_edge {size['shortest_edge']}, longest_edge {size['longest_edge']}), too "
                f"elongated for it; the transformers pipeline fails on it too ({exc})"
            )
    return BadRequestError(f"inputs: this model's image processor cannot prepare a {width}x{height} image ({exc})")


class ImageClassification(Task):
    """Image bytes answer `[{label, score}]`, best first (5 by default)."""

    name = "image-classification"
    batches = True
    Inputs = bytes
    Parameters = ClassificationParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("image-classification")

    def run(self, model: LoadedModel, inputs: bytes, parameters: ClassificationParameters) -> list[dict]:
        return self.run_many(model, [inputs], parameters)[0]

    def run_many(self, model: LoadedModel, inputs: list[bytes], parameters: ClassificationParameters) -> list[Any]:
        """Each image prepared alone, the model run over images prepared to one size together."""
        feeds = [prepare_image(model, data)[0] for data in inputs]
        return [
            vision_post.classify(
                outputs["logits"][0],
                model.config,
                top_k=parameters.top_k,
                function_to_apply=parameters.function_to_apply,
            )
            for outputs in run_stacked(model, feeds, ("logits",))
        ]


class DetectionParameters(Parameters):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


class ObjectDetection(Task):
    """Image bytes answer `[{label, score, box: {xmin, ymin, xmax, ymax}}]`, boxes in pixels of the image.

    DETR and YOLOS: the export's `logits` and `pred_boxes` (normalised centre, width, height).
    """

    name = "object-detection"
    Inputs = bytes
    Parameters = DetectionParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("object-detection")

    def run(self, model: LoadedModel, inputs: bytes, parameters: DetectionParameters) -> list[dict]:
        outputs, image = run_image(model, inputs, ("logits", "pred_boxes"))
        return vision_post.detect(
            outputs["logits"][0],
            outputs["pred_boxes"][0],
            (image.height, image.width),
            model.config,
            parameters.threshold,
        )


class SegmentationParameters(Parameters):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.9
    mask_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    overlap_mask_area_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    subtask: Literal["semantic", "instance", "panoptic"] | None = None


# the outputs segmentation reads: per-pixel logits (SegFormer, MobileViT), or queries (DETR, MaskFormer)
SEGMENTATION_OUTPUTS = ("logits", "pred_masks", "class_queries_logits", "masks_queries_logits")


class ImageSegmentation(Task):
    """Image bytes answer `[{label, score, mask}]`; `mask` a base64 PNG (mode L) the size of the image.

    optimum exports SegFormer for semantic-segmentation and the others (MobileViT, DETR panoptic, MaskFormer)
    for image-segmentation. MaskFormer's export takes one input size, which its image processor must resize to.
    """

    name = "image-segmentation"
    Inputs = bytes
    Parameters = SegmentationParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        config = read_json(folder / "config.json")
        if config.get("model_type") == "segformer" and any(
            a.endswith("ForSemanticSegmentation") for a in config.get("architectures") or []
        ):
            return ExportKind("semantic-segmentation")
        return ExportKind("image-segmentation")

    def run(self, model: LoadedModel, inputs: bytes, parameters: SegmentationParameters) -> list[dict]:
        outputs, image = run_image(model, inputs, SEGMENTATION_OUTPUTS)
        try:
            segments = vision_post.segment(
                outputs,
                image_processor(model),
                (image.height, image.width),
                subtask=parameters.subtask,
                threshold=parameters.threshold,
                mask_threshold=parameters.mask_threshold,
                overlap_mask_area_threshold=parameters.overlap_mask_area_threshold,
            )
        except ValueError as exc:
            raise BadRequestError(f"parameters.subtask: {exc}") from None
        names = vision_post.label_names(model.config, 1 + max((label for label, _, _ in segments), default=0))
        return [{"score": score, "label": names[label], "mask": encode_mask(mask)} for label, score, mask in segments]
