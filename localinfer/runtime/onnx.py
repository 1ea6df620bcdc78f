"""ONNX Runtime sessions: providers, threads and feeding, set up in one place."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def default_threads() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# optimum's tasks whose input is a raw waveform (wav2vec2, HuBERT): 30 s in one pass is 6000 frames of attention on
# the tiny fixture, ~600 MB of activations. ONNX Runtime's memory pattern, planned on a run and allocated as one block
# on the next run of the same shapes (every 30 s chunk of long audio), lands beside the arena's chunks of the first
# run: the peak doubles (1267 MB for a second 30 s pass, 672 MB without it; the answers equal, the time too). Models
# of short inputs keep it: it saves ~10 us a run, which a generation loop pays at every token.
WAVEFORM_TASKS = frozenset({"automatic-speech-recognition", "audio-classification"})


def session_options(threads: int | None = None, *, memory_pattern: bool = True) -> Any:
    """Threads set to the cores (or `threads`), all graph optimisations; ONNX Runtime's memory pattern unless
    `memory_pattern` is false (see WAVEFORM_TASKS)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = memory_pattern
    return options


def providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def compute_type(session: Any, precision: str = "fp32") -> str:
    """The `x-compute-type` of answers from `session`: the hosted API's `cpu+optimized` (or `gpu+optimized`) for
    fp32 graphs; `cpu+int8` (or `gpu+int8`) for quantised ones, which answer a little differently."""
    device = "gpu" if "CUDA" in session.get_providers()[0] else "cpu"
    return f"{device}+optimized" if precision == "fp32" else f"{device}+{precision}"


class OnnxRunner:
    """Runs an ONNX graph: named numpy inputs in, named numpy outputs out."""

    backend = "onnx"

    def __init__(
        self, model_path: Path, *, threads: int | None = None, precision: str = "fp32", task: str | None = None
    ) -> None:
        import onnxruntime as ort

        options = session_options(threads, memory_pattern=task not in WAVEFORM_TASKS)
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers())
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.compute_type = compute_type(self.session, precision)

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph. `outputs` names the outputs wanted; those it lacks are skipped (all if none match)."""
        names = [n for n in outputs or () if n in self.output_names] or self.output_names
        inputs = {}
        for name in self.input_names:
            if name in feeds:
                inputs[name] = feeds[name]
            elif name == "token_type_ids":  # exported with segment ids the tokenizer does not make
                inputs[name] = np.zeros_like(feeds["input_ids"])
            else:
                raise KeyError(f"the ONNX graph needs input {name!r}")
        return dict(zip(names, self.session.run(names, inputs), strict=True))


class OnnxSessions:
    """Several graphs of one export, each in one ONNX Runtime session: a generation model's encoder and decoder
    (`kind.sessions`), which localinfer.decoding runs step by step."""

    backend = "onnx"

    def __init__(
        self, folder: Path, names: Sequence[str], *, threads: int | None = None, precision: str = "fp32"
    ) -> None:
        import onnxruntime as ort

        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}: export the model with optimum's -with-past task"
            )
        options = session_options(threads)
        self.sessions = {
            name: ort.InferenceSession(str(folder / name), sess_options=options, providers=providers())
            for name in names
        }
        self.compute_type = compute_type(next(iter(self.sessions.values())), precision)
