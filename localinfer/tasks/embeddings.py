"""Sentence embeddings as sentence-transformers computes them, shared by feature-extraction and sentence-similarity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFailureError
from ..runtime import ExportKind, LoadedModel
from ..text import read_json, run_tokenized
from .base import BATCH_SIZE, text_tokenizer


def is_sentence_transformer(folder: Path) -> bool:
    return (folder / "modules.json").is_file()


def embedding_export_kind(folder: Path) -> ExportKind:
    library = "sentence_transformers" if is_sentence_transformer(folder) else "transformers"
    return ExportKind("feature-extraction", library)


@dataclass(frozen=True)
class PoolingConfig:
    """The model's sentence-transformers modules: window, lower-casing, pooling and normalisation."""

    max_seq_length: int | None = None
    lowercase: bool = False
    pooling: str = "mean"
    normalize: bool = False
    other_modules: tuple[str, ...] = ()

    @classmethod
    def from_folder(cls, folder: Path) -> PoolingConfig:
        """Read modules.json; a plain transformers model gets mean pooling, as sentence-transformers gives it."""
        modules = read_json(folder / "modules.json") if is_sentence_transformer(folder) else []
        if not modules:
            return cls()
        found: dict[str, object] = {"pooling": "mean", "normalize": False}
        others = []
        for module in modules:
            kind = module.get("type", "").rsplit(".", 1)[-1]
            path = folder / module.get("path", "")
            if kind == "Transformer":
                settings = read_json(path / "sentence_bert_config.json")
                found["max_seq_length"] = settings.get("max_seq_length")
                found["lowercase"] = bool(settings.get("do_lower_case", False))
            elif kind == "Pooling":
                found["pooling"] = _pooling_mode(read_json(path / "config.json"))
            elif kind == "Normalize":
                found["normalize"] = True
            else:
                others.append(kind)
        return cls(other_modules=tuple(others), **found)  # type: ignore[arg-type]


def _pooling_mode(settings: dict) -> str:
    if settings.get("pooling_mode"):
        return str(settings["pooling_mode"])
    for mode in ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "lasttoken", "mean_tokens"):
        if settings.get(f"pooling_mode_{mode}"):
            return {
                "cls_token": "cls",
                "max_tokens": "max",
                "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "lasttoken": "lasttoken",
                "mean_tokens": "mean",
            }[mode]
    return "mean"


def pool(tokens: np.ndarray, mask: np.ndarray, config: PoolingConfig) -> np.ndarray:
    """Pool token embeddings [batch, seq, dim] into sentence embeddings [batch, dim].

    Used when the graph has no `sentence_embedding` output (a plain transformers model, or an ONNX
    file shipped without the pooling); it follows sentence_transformers.models.Pooling.
    """
    if config.other_modules:
        raise ModelFailureError(
            f"the model's modules {list(config.other_modules)} are not in its ONNX graph; "
            "remove the shipped ONNX file so that localinfer exports the whole model"
        )
    weights = mask[..., None].astype(tokens.dtype)
    if config.pooling == "cls":
        pooled = tokens[:, 0]
    elif config.pooling == "max":
        pooled = np.where(weights > 0, tokens, np.finfo(tokens.dtype).min).max(axis=1)
    elif config.pooling == "lasttoken":
        pooled = tokens[np.arange(len(tokens)), mask.sum(axis=1) - 1]
    elif config.pooling in ("mean", "mean_sqrt_len_tokens"):
        counts = np.clip(weights.sum(axis=1), 1e-9, None)
        pooled = (tokens * weights).sum(axis=1) / (np.sqrt(counts) if config.pooling != "mean" else counts)
    else:
        raise ModelFailureError(f"pooling mode {config.pooling!r} is not supported")
    return l2_normalize(pooled) if config.normalize else pooled


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """As torch.nn.functional.normalize: divide by the L2 norm, at least 1e-12."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def sentence_embeddings(model: LoadedModel, texts: list[str]) -> np.ndarray:
    """One embedding per text, [len(texts), dim] float32, as SentenceTransformer.encode gives them."""
    if "pooling" not in model.state:
        model.state["pooling"] = PoolingConfig.from_folder(model.folder)
    config: PoolingConfig = model.state["pooling"]
    tokenizer = text_tokenizer(model, max_length=config.max_seq_length, lowercase=config.lowercase)

    graph_outputs = model.runner.output_names
    pooled_in_graph = graph_outputs is None or "sentence_embedding" in graph_outputs
    wanted = ("sentence_embedding",) if pooled_in_graph else ("token_embeddings", "last_hidden_state")

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = model.runner.run(feeds, wanted)
        if "sentence_embedding" in outputs:
            return list(outputs["sentence_embedding"])
        tokens = outputs.get("token_embeddings", outputs.get("last_hidden_state"))
        return list(pool(tokens, feeds["attention_mask"], config))

    return np.stack(run_tokenized(tokenizer, texts, run, batch_size=BATCH_SIZE)).astype(np.float32)
