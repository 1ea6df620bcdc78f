"""Export TAPAS to ONNX: optimum has no TAPAS exporter, and a plain export fails on its segment reduction.

TAPAS's `_segment_reduce` uses `scatter_reduce(include_self=False)`, which the ONNX exporter refuses
("ONNX does not support include_self=False for scatter_reduce"). During the export it is replaced by an
equivalent built from scatter_add and include_self=True reductions, whose logits equal the original's.
The traced graph takes batch size 1, so queries run one at a time.
"""

from __future__ import annotations

from pathlib import Path

from ..imports import transformers_ready


def _segment_reduce_for_onnx(values, index, segment_reduce_fn, name):
    import torch

    transformers_ready()
    import transformers.models.tapas.modeling_tapas as tapas

    flat = tapas.flatten(index)
    segments = int(flat.num_segments)
    indices = flat.indices.long()
    flat_values = values.reshape(-1).float()
    counts = torch.zeros(segments).scatter_add(0, indices, torch.ones_like(flat_values))
    if segment_reduce_fn in ("sum", "mean"):
        out = torch.zeros(segments).scatter_add(0, indices, flat_values)
        if segment_reduce_fn == "mean":
            out = out / counts.clamp(min=1)
    else:  # "amax" / "amin": empty segments give 0, as include_self=False into zeros does
        start = float("-inf") if segment_reduce_fn == "amax" else float("inf")
        out = torch.full((segments,), start).scatter_reduce(
            0, indices, flat_values, reduce=segment_reduce_fn, include_self=True
        )
        out = torch.where(counts > 0, out, torch.zeros_like(out))
    shape = [*index.batch_shape(), int(index.num_segments)]
    return out.view(shape).to(values.dtype), tapas.range_index_map(index.batch_shape(), index.num_segments)


def export_tapas(folder: Path, output: Path) -> None:
    """Write model.onnx (inputs input_ids, attention_mask, token_type_ids; outputs logits, logits_aggregation)."""
    import torch

    transformers_ready()
    import transformers.models.tapas.modeling_tapas as tapas
    from transformers import TapasForQuestionAnswering, TapasTokenizer

    model = TapasForQuestionAnswering.from_pretrained(folder).eval()
    tokenizer = TapasTokenizer.from_pretrained(folder)
    import pandas as pd

    sample = tokenizer(
        table=pd.DataFrame({"a": ["1", "2"], "b": ["x", "y"]}), queries="which a?", padding=True, return_tensors="pt"
    )

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.logits, out.logits_aggregation

    original = tapas._segment_reduce
    tapas._segment_reduce = _segment_reduce_for_onnx
    try:
        output.mkdir(parents=True)
        with torch.no_grad():
            torch.onnx.export(
                Wrapper().eval(),
                (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
                str(output / "model.onnx"),
                opset_version=18,
                dynamo=False,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["logits", "logits_aggregation"],
                dynamic_axes={
                    "input_ids": {1: "sequence"},
                    "attention_mask": {1: "sequence"},
                    "token_type_ids": {1: "sequence"},
                    "logits": {1: "sequence"},
                },
            )
    finally:
        tapas._segment_reduce = original
    model.config.save_pretrained(output)
    tokenizer.save_pretrained(output)
