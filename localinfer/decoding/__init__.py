"""localinfer's own decoding loop: numpy over a `StepModel` (an exported decoder run by ONNX Runtime).

`transformers.generate` cannot run without torch, and onnxruntime-genai covers neither encoder-decoder models nor
optimum's exports, so the loop is ported here from `transformers.generation` (4.57): `search` (greedy, sampling,
beam search, streaming), `processors` (the logits processors and warpers) and `settings` (the generation config
as the pipelines and `generate` resolve it). No torch import anywhere in this package.
"""

from localinfer.decoding.search import GeneratedToken, GenerationSettings, StepModel, generate, stream, stream_tokens
from localinfer.decoding.settings import resolve_settings

__all__ = [
    "GeneratedToken",
    "GenerationSettings",
    "StepModel",
    "generate",
    "resolve_settings",
    "stream",
    "stream_tokens",
]
