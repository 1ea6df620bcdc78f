"""The PyTorch route: the same feeds through `transformers` / `sentence-transformers` models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..imports import transformers_ready
from .export import ExportKind


class TorchRunner:
    """Runs the PyTorch model that optimum would export for `kind`; same inputs and output names."""

    backend = "torch"
    compute_type = "cpu"
    output_names = None

    def __init__(self, folder: Path, kind: ExportKind) -> None:
        import inspect

        import torch

        transformers_ready()
        from optimum.exporters.tasks import TasksManager

        self._torch = torch
        if kind.task == "table-question-answering":  # TAPAS: optimum's task table does not know it
            from transformers import AutoModelForTableQuestionAnswering

            self.model: Any = AutoModelForTableQuestionAnswering.from_pretrained(folder)
        else:
            self.model = TasksManager.get_model_from_task(
                kind.task, str(folder), library_name=kind.library, framework="pt", device="cpu"
            )
        self.model.eval()
        self.sentence_transformers = kind.library == "sentence_transformers"
        if torch.cuda.is_available():
            self.model.to("cuda")
            self.compute_type = "gpu"
        self.device = next(self.model.parameters()).device
        forward = self.model.forward
        self.input_names = list(inspect.signature(forward).parameters)

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model; every tensor output comes back (`outputs` is a hint the ONNX route uses)."""
        torch = self._torch
        tensors = {k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}
        with torch.inference_mode():
            if self.sentence_transformers:
                tensors.pop("token_type_ids", None)
                outputs = self.model(tensors)
            else:
                tensors = {k: v for k, v in tensors.items() if k in self.input_names}
                outputs = self.model(**tensors)
        return {k: v.float().cpu().numpy() for k, v in outputs.items() if isinstance(v, torch.Tensor)}


class TorchPipelineModel:
    """The PyTorch model that optimum would export for `kind`, for a transformers pipeline."""

    backend = "torch"

    def __init__(self, folder: Path, kind: ExportKind) -> None:
        import torch

        transformers_ready()
        from optimum.exporters.tasks import TasksManager

        task = kind.task.removesuffix("-with-past")
        self.model: Any = TasksManager.get_model_from_task(
            task, str(folder), library_name=kind.library, framework="pt", device="cpu"
        )
        self.model.eval()
        self.compute_type = "cpu"
        if torch.cuda.is_available():
            self.model.to("cuda")
            self.compute_type = "gpu"
