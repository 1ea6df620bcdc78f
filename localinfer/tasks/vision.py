"""image-classification, object-detection, image-segmentation: the body is an image, decoded with Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..media import decode_image, encode_mask
from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .audio import ClassificationParameters, _plain
from .base import Parameters, Task, task_pipeline


class ImageClassification(Task):
    """Image bytes answer `[{label, score}]`, best first (5 by default)."""

    name = "image-classification"
    Inputs = bytes
    Parameters = ClassificationParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("image-classification", ort_class="ORTModelForImageClassification")

    def run(self, model: LoadedModel, inputs: bytes, parameters: ClassificationParameters) -> list[dict]:
        pipe = task_pipeline(model, self.name, "image_processor")
        return _plain(pipe(decode_image(inputs), **parameters.model_dump(exclude_none=True)))


class DetectionParameters(Parameters):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


class ObjectDetection(Task):
    """Image bytes answer `[{label, score, box: {xmin, ymin, xmax, ymax}}]`, boxes in pixels of the image.

    optimum exports DETR and YOLOS but has no ONNX Runtime class for detection: its custom-task class
    runs the export, and the pipeline reads `logits` and `pred_boxes` by name.
    """

    name = "object-detection"
    Inputs = bytes
    Parameters = DetectionParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("object-detection", ort_class="ORTModelForCustomTasks")

    def run(self, model: LoadedModel, inputs: bytes, parameters: DetectionParameters) -> list[dict]:
        pipe = task_pipeline(model, self.name, "image_processor")
        return _plain(pipe(decode_image(inputs), threshold=parameters.threshold))


class SegmentationParameters(Parameters):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.9
    mask_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    overlap_mask_area_threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    subtask: Literal["semantic", "instance", "panoptic"] | None = None


class ImageSegmentation(Task):
    """Image bytes answer `[{label, score, mask}]`; `mask` a base64 PNG (mode L) the size of the image.

    Semantic models (SegFormer, MobileViT) run through optimum's semantic-segmentation class; DETR
    panoptic and MaskFormer through its custom-task class. MaskFormer's export takes one input size,
    which its image processor must resize to.
    """

    name = "image-segmentation"
    Inputs = bytes
    Parameters = SegmentationParameters
    media = "image"

    def export_kind(self, folder: Path) -> ExportKind:
        config = read_json(folder / "config.json")
        if any(a.endswith("ForSemanticSegmentation") for a in config.get("architectures") or []):
            task = "semantic-segmentation" if config.get("model_type") == "segformer" else "image-segmentation"
            return ExportKind(task, ort_class="ORTModelForSemanticSegmentation")
        return ExportKind("image-segmentation", ort_class="ORTModelForCustomTasks")

    def run(self, model: LoadedModel, inputs: bytes, parameters: SegmentationParameters) -> list[dict]:
        pipe = task_pipeline(model, self.name, "image_processor")
        segments = pipe(decode_image(inputs), **parameters.model_dump(exclude_none=True))
        return [
            {
                "score": None if s["score"] is None else float(s["score"]),
                "label": s["label"],
                "mask": encode_mask(s["mask"]),
            }
            for s in segments
        ]
