"""int8 models, opt-in: every export kind quantised, its drift from fp32 measured and recorded, its own keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localinfer import LocalInference
from localinfer.cli import main as cli_main
from localinfer.drift import measure_drift
from localinfer.errors import BadRequestError
from localinfer.registry import Registry, RegistryError
from localinfer.runtime.manifest import read_manifest
from localinfer.runtime.quantize import RECIPE, RECORD, read_record
from localinfer.server import _registry
from tests.fixtures.runtime_cases import CASES, _materialise
from tests.fixtures.tiny_models import write_models_toml
from tests.test_runtime_only import RUNTIME_PYTHON, answer_in_child

# One fixture model per export kind.
KINDS = {
    "distilbert-sentiment": "encoder",
    "st-mean-normalize": "sentence-transformers encoder",
    "bart": "encoder + merged decoder",
    "gpt2": "causal decoder with past",
    "whisper": "Whisper",
    "vit": "vision",
    "wav2vec2-classifier": "audio",
}
CLASSIFIERS = {"distilbert-sentiment", "vit", "wav2vec2-classifier"}
INTEGER_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear", "MatMulNBits"}


@pytest.fixture(scope="module")
def int8_engine(tiny, home, tmp_path_factory) -> LocalInference:
    """The same tiny models as `engine`, in the same home, at the engine-level precision int8."""
    toml = write_models_toml(tmp_path_factory.mktemp("int8") / "models.toml", tiny)
    return LocalInference(toml, home, precision="int8")


def _payload(name: str) -> dict:
    return {**_materialise(CASES[name][0]), "options": {"use_cache": False}}


def _ops(path: Path) -> set[str]:
    import onnx

    def walk(graph) -> set[str]:
        found = set()
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.g.node:
                    found |= walk(attribute.g)
        return found

    return walk(onnx.load(str(path), load_external_data=False).graph)


def _nodes(graph):
    for node in graph.node:
        yield graph, node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _nodes(attribute.g)


@pytest.mark.parametrize("name", list(KINDS))
def test_int8_export_of_each_kind_answers_and_records_the_drift_it_has(name, engine, int8_engine):
    model_id = f"tiny/{name}"
    answer = int8_engine.answer(model_id, _payload(name))
    reference = engine.answer(model_id, _payload(name))
    assert answer.compute_type == "cpu+int8" and reference.compute_type == "cpu+optimized"
    assert type(answer.result) is type(reference.result)

    spec, handler = int8_engine.resolve(model_id)
    folder = int8_engine.onnx_dir(spec, handler)
    graphs = sorted(folder.glob("*.onnx"))
    assert graphs and all(_ops(graph) & INTEGER_OPS for graph in graphs), "every graph is quantised"
    record = read_record(folder)
    assert record["recipe"] == RECIPE
    recomputed = measure_drift(handler, engine.preload(model_id), int8_engine.preload(model_id))
    assert record["drift"] == pytest.approx(recomputed, abs=1e-5)
    assert int8_engine.drift(model_id) == record["drift"] and engine.drift(model_id) is None
    assert record["drift"]["task"] == handler.name and record["drift"]["probes"] >= 3

    if name in CLASSIFIERS:  # the top label agrees wherever fp32's margin exceeds the drift measured on the probes
        ours, theirs = (r[0] if isinstance(r[0], list) else r for r in (answer.result, reference.result))
        ranked = sorted(theirs, key=lambda c: -c["score"])
        if ranked[0]["score"] - ranked[1]["score"] > 2 * record["drift"]["max_score_difference"]:
            assert max(ours, key=lambda c: c["score"])["label"] == ranked[0]["label"]


def test_fp32_and_int8_never_share_an_export_folder_or_a_cache_entry(engine, int8_engine):
    model_id = "tiny/distilbert-sentiment"
    spec, handler = engine.resolve(model_id)
    engine.preload(model_id)
    int8_engine.preload(model_id)
    fp32_folder, int8_folder = engine.onnx_dir(spec, handler), int8_engine.onnx_dir(spec, handler)
    assert fp32_folder != int8_folder and fp32_folder.is_dir() and int8_folder.is_dir()
    assert read_record(fp32_folder) is None and (int8_folder / RECORD).is_file()

    payload = {"inputs": "a sentence only this test sends, 8131"}  # one home, one result cache for both engines
    fp32 = engine.answer(model_id, payload)
    int8 = int8_engine.answer(model_id, payload)
    assert not int8.cached and int8.compute_type == "cpu+int8"
    assert int8.result == int8_engine.query(model_id, {**payload, "options": {"use_cache": False}})
    assert int8.result != fp32.result  # the int8 scores differ in their last digits at least
    again = int8_engine.answer(model_id, payload)
    assert again.cached and again.result == int8.result and again.compute_type == "cpu+int8"
    assert engine.answer(model_id, payload).result == fp32.result


def test_precision_of_a_models_toml_entry_beats_the_engines(tiny, home, tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[models."a/int8"]\npath = "{tiny["distilbert-sentiment"]}"\ntask = "text-classification"\n'
        'precision = "int8"\n'
        f'[models."a/fp32"]\npath = "{tiny["distilbert-sentiment"]}"\ntask = "text-classification"\n'
        'precision = "fp32"\n'
        f'[models."a/unset"]\npath = "{tiny["distilbert-sentiment"]}"\ntask = "text-classification"\n'
    )
    assert Registry(toml).resolve("a/int8").precision == "int8"
    assert Registry(toml).resolve("a/unset").precision is None
    fp32_default, int8_default = LocalInference(toml, home), LocalInference(toml, home, precision="int8")
    assert [fp32_default.precision_of(m) for m in ("a/int8", "a/fp32", "a/unset")] == ["int8", "fp32", "fp32"]
    assert [int8_default.precision_of(m) for m in ("a/int8", "a/fp32", "a/unset")] == ["int8", "fp32", "int8"]
    listed = {row["model_id"]: row["precision"] for row in _registry(fp32_default)}
    assert listed["a/int8"] == "int8" and listed["a/unset"] == "fp32"


def test_bad_precision_is_a_clear_error(tiny, home, tmp_path, engine, capsys):
    toml = tmp_path / "models.toml"
    toml.write_text(f'[models."a/b"]\npath = "{tiny["bert-base"]}"\nprecision = "int4"\n')
    with pytest.raises(RegistryError, match=r'\[models."a/b"\].*precision.*int8'):
        Registry(toml)
    with pytest.raises(BadRequestError, match="unknown precision 'fp16'; known precisions: fp32, int8"):
        LocalInference(home=home, precision="fp16")
    with pytest.raises(BadRequestError, match="unknown precision 'int4'"):
        engine.export("tiny/bert-base", precision="int4")
    with pytest.raises(SystemExit):
        cli_main(["export", "tiny/bert-base", "--precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    torch_toml = tmp_path / "torch.toml"
    torch_toml.write_text(f'[models."a/b"]\npath = "{tiny["bert-base"]}"\nbackend = "torch"\nprecision = "int8"\n')
    with pytest.raises(BadRequestError, match="precision int8 runs on ONNX Runtime, not on torch"):
        LocalInference(torch_toml, home).query("a/b", "hello")


def test_shipped_int8_folder_round_trips_its_manifest_and_answers(engine, int8_engine, tmp_path):
    model_id = "tiny/distilbert-sentiment"
    out = engine.export_to(model_id, tmp_path / "shipped", precision="int8")  # the call's precision wins
    manifest = read_manifest(out)
    assert manifest.kind.precision == "int8" and manifest.task == "text-classification"
    assert manifest.drift == int8_engine.drift(model_id) and read_record(out)["drift"] == manifest.drift
    assert json.loads((out / "localinfer.json").read_text())["export"]["precision"] == "int8"

    served = LocalInference(home=tmp_path / "home")
    answer = served.answer(str(out), _payload("distilbert-sentiment"))
    assert answer.compute_type == "cpu+int8" and served.precision_of(str(out)) == "int8"
    assert answer.result == int8_engine.query(model_id, _payload("distilbert-sentiment"))
    assert served.drift(str(out)) == manifest.drift
    assert not (tmp_path / "home" / "exports").exists(), "a shipped int8 folder is served as it is"
    with pytest.raises(BadRequestError, match="is a int8 export; it cannot run at precision fp32"):
        LocalInference(home=tmp_path / "home", precision="fp32").query(str(out), "hello")


def test_cli_exports_int8_and_lists_its_drift(tiny, home, tmp_path, int8_engine, capsys):
    toml = write_models_toml(tmp_path / "models.toml", {"distilbert-sentiment": tiny["distilbert-sentiment"]})
    args = ["--models", str(toml), "--home", str(home), "-q"]
    assert cli_main([*args, "export", "tiny/distilbert-sentiment", "--precision", "int8"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "--int8--" in printed and (Path(printed) / RECORD).is_file()
    assert cli_main([*args, "models"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("tiny/distilbert-sentiment"))
    assert " fp32 " in row and "drift" not in row  # this models.toml does not ask for int8
    asked = 'task = "text-classification"\nprecision = "int8"'
    toml.write_text(toml.read_text().replace('task = "text-classification"', asked))
    assert cli_main([*args, "models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny/distilbert-sentiment"))
    drift = int8_engine.drift("tiny/distilbert-sentiment")
    assert " int8 " in row and f"label agreement {drift['label_agreement']}" in row and "(12 probes)" in row


def test_runtime_only_install_runs_a_shipped_int8_folder(engine, int8_engine, tmp_path):
    if not RUNTIME_PYTHON.is_file():
        pytest.fail(f"{RUNTIME_PYTHON} is missing: run the README's set-up command (it makes .venv-runtime)")
    folders = {name: engine.export_to(f"tiny/{name}", tmp_path / name, precision="int8") for name in ("gpt2", "vit")}
    cases = [{"folder": str(folder), "payload": CASES[name][0]} for name, folder in folders.items()]
    child = answer_in_child(RUNTIME_PYTHON, cases, tmp_path)
    answers = list(zip(child["answers"], child["compute_types"], strict=True))
    for (name, folder), (result, compute_type) in zip(folders.items(), answers, strict=True):
        assert compute_type == "cpu+int8"
        assert result == LocalInference(home=tmp_path / "full").query(str(folder), _payload(name)), name


@pytest.mark.parametrize("name", ["distilbert-sentiment", "bart", "gpt2", "vit", "whisper"])
def test_every_weight_projection_is_8_bit_per_block(name, engine, int8_engine):
    """The recipe: every MatMul with a constant weight is MatMulNBits at 8 bits, blocks of 256 inputs in
    encoders and 128 in decoder step graphs (the merged decoder's branches, GPT-2 with past); none stays fp32."""
    import onnx

    model_id = f"tiny/{name}"
    spec, handler = engine.resolve(model_id)
    engine.preload(model_id)
    int8_engine.preload(model_id)
    for graph in int8_engine.preload(model_id).kind.sessions or ("model.onnx",):
        fp32 = onnx.load(str(engine.onnx_dir(spec, handler) / graph))
        int8 = onnx.load(str(int8_engine.onnx_dir(spec, handler) / graph))
        projections = _weight_projections(fp32.graph)
        assert projections and not _weight_projections(int8.graph), f"{graph}: fp32 projections left"
        nbits = [node for _, node in _nodes(int8.graph) if node.op_type == "MatMulNBits"]
        assert {n.name.removesuffix("_Q8") for n in nbits} == projections  # Gemms too, as MatMuls
        decoder = any(i.name.startswith("past_key_values") for i in fp32.graph.input)
        settings = {
            (_attribute(n, "bits"), _attribute(n, "block_size"), _attribute(n, "accuracy_level")) for n in nbits
        }
        assert settings == {(8, 128 if decoder else 256, 4)}, (graph, settings)


def test_an_int8_answer_does_not_depend_on_its_batch(int8_engine):
    """Activations are quantised per row: a sentence answers alike alone and among others (dynamic quantisation
    per tensor would let a long neighbour change it), so batching requests keeps int8 answers exact."""
    import numpy as np

    model_id = "tiny/st-mean-normalize"
    task = "feature-extraction"
    alone = int8_engine.query(model_id, {"inputs": "a short one", "options": {"use_cache": False}}, task=task)
    others = ["a short one", "a much longer sentence, with many more words in it than the first " * 3, "x"]
    batched = int8_engine.query(model_id, {"inputs": others, "options": {"use_cache": False}}, task=task)
    assert np.allclose(batched[0], alone, atol=1e-6, rtol=0)


def _attribute(node, name: str):
    from onnx import helper

    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _weight_projections(graph, outer: frozenset = frozenset()) -> set[str]:
    """Names of the MatMul / Gemm nodes with a constant (fp32) weight, subgraphs included."""
    constants = outer | {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    found = set()
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.node:
                found |= _weight_projections(attribute.g, frozenset(constants))
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants:
            found.add(node.name)
    return found
