"""Request bounds (localinfer/limits.py): each beyond-the-bound request answers a 4xx naming the bound."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from localinfer import BadRequestError, LocalInference, ModelFailureError, PayloadTooLargeError
from localinfer.limits import Limits
from tests.fixtures.tiny_models import write_models_toml

SAMPLES = Path(__file__).parent / "samples"
CLASSIFIER = "tiny/distilbert-sentiment"


@pytest.fixture(scope="module")
def bounded(tiny, home, tmp_path_factory) -> LocalInference:
    """An engine with small bounds, sharing the session's exports."""
    toml = write_models_toml(tmp_path_factory.mktemp("bounded") / "models.toml", tiny)
    limits = Limits(max_json_depth=8, max_list_items=3, max_image_pixels=10_000, max_audio_seconds=5)
    return LocalInference(toml, home, limits=limits)


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_json_nested_beyond_any_parser_is_400(engine):
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(BadRequestError, match="nested too deeply"):
        engine.query(CLASSIFIER, body)


def test_json_depth_bound_names_the_setting(engine, bounded):
    payload = {"inputs": "hi", "parameters": {"top_k": _deep(20)}}
    with pytest.raises(BadRequestError, match=r"nested deeper than 8 levels \(Limits\(max_json_depth=\.\.\.\)"):
        bounded.query(CLASSIFIER, payload)
    with pytest.raises(BadRequestError, match="nested deeper than 64 levels"):  # the default, in-process dicts too
        engine.query(CLASSIFIER, {"inputs": _deep(70_000)})
    with pytest.raises(BadRequestError, match="parameters.top_k"):  # within the bound: the usual validation
        engine.query(CLASSIFIER, payload)


def test_list_items_bound(engine, bounded):
    with pytest.raises(BadRequestError, match=r"inputs: a list of 4 items; the limit is 3 \(.*--max-list-items"):
        bounded.query(CLASSIFIER, {"inputs": ["a", "b", "c", "d"]})
    assert len(bounded.query(CLASSIFIER, {"inputs": ["a", "b", "c"]})) == 3
    with pytest.raises(BadRequestError, match="a list of 1025 items; the limit is 1024"):
        engine.query(CLASSIFIER, {"inputs": ["a"] * 1025})
    sentences = {"source_sentence": "a", "sentences": ["b", "c", "d", "e"]}
    with pytest.raises(BadRequestError, match="a list of 4 items"):  # lists inside the inputs too
        bounded.query("tiny/st-cls", {"inputs": sentences})


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_pixel_bound(engine, bounded):
    engine.query("tiny/vit", (SAMPLES / "plane.jpg").read_bytes())  # cached in the home both engines share
    with pytest.raises(BadRequestError, match=r"an image of 300x200 pixels; the limit is 10000 pixels"):
        bounded.query("tiny/vit", (SAMPLES / "plane.jpg").read_bytes())
    bomb = _png((20_000, 20_000), mode="1")  # 400 million pixels in a few kilobytes
    assert len(bomb) < 1_000_000
    with pytest.raises(BadRequestError, match="decompression bomb"):
        engine.query("tiny/vit", bomb)
    between = _png((10_000, 10_000), mode="1")  # over the default bound, under twice Pillow's
    with pytest.raises(BadRequestError, match=r"an image of 10000x10000 pixels; the limit is 89478485 pixels"):
        engine.query("tiny/vit", between)


def test_audio_duration_bound(engine, bounded):
    engine.query("tiny/wav2vec2-classifier", (SAMPLES / "sample1.flac").read_bytes())  # cached: refused all the same
    for name in ("sample1.flac", "sample1.webm", "sample1_dual.ogg"):
        with pytest.raises(PayloadTooLargeError, match=r"audio longer than 5 s .*the limit is 5 s \(.*max-audio"):
            bounded.query("tiny/wav2vec2-classifier", (SAMPLES / name).read_bytes())


def _streamed_webm(seconds: int) -> bytes:
    """Opus in WebM written to a pipe, as a browser's MediaRecorder streams it: the container declares no duration."""
    import av
    import numpy as np

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:
            self.data += chunk
            return len(chunk)

    pipe = Pipe()
    rate = 48000
    with av.open(pipe, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(rate * seconds) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for converted in av.AudioResampler(format=stream.format.name, layout="mono", rate=rate).resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return bytes(pipe.data)


def test_audio_without_a_declared_duration_is_bounded_while_decoding(bounded):
    import av

    data = _streamed_webm(8)
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is None
    with pytest.raises(PayloadTooLargeError, match="audio longer than 5 s"):
        bounded.query("tiny/wav2vec2-classifier", data)
    assert len(bounded.query("tiny/wav2vec2-classifier", _streamed_webm(4))) == 5  # under the bound: answered


def test_model_failure_is_one_line(engine, monkeypatch):
    model = engine.preload(CLASSIFIER)
    dump = "Non-zero status code returned while running Add node.\nName:'/Add'\nStatus Message: broadcast\n  graph..."
    monkeypatch.setattr(model.runner, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(dump)))
    with pytest.raises(ModelFailureError) as info:
        engine.query(CLASSIFIER, {"inputs": "boom", "options": {"use_cache": False}})
    assert info.value.body == {"error": "RuntimeError: Non-zero status code returned while running Add node."}


def test_cli_flags_set_the_bounds(tiny, home, tmp_path):
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    env = {**os.environ, "LOCALINFER_HOME": str(home), "LOCALINFER_MODELS": str(toml)}
    done = subprocess.run(
        [sys.executable, "-m", "localinfer", "--max-list-items", "1", "query", CLASSIFIER, "--data", '["a", "b"]'],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"].startswith("inputs: a list of 2 items; the limit is 1")


def _child_peaks(engine, tiny, home, tmp_path, cases: list[tuple[str, object]]) -> list[dict]:
    """Each case answered in turn by one child process (tests/fixtures/bounded_child.py, under 4 GB, this checkout's
    localinfer, no torch): its status and its peak resident memory so far."""
    from tests.fixtures import bounded_child

    for model in {model for model, _ in cases}:
        engine.export(model)  # exports need torch: made here, so that the child only loads them
    toml = write_models_toml(tmp_path / "models.toml", tiny)
    (tmp_path / "cases.json").write_text(json.dumps([{"model": m, "payload": p} for m, p in cases]))
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "LOCALINFER_HOME": str(home),
        "LOCALINFER_MODELS": str(toml),
        "USE_TORCH": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, bounded_child.__file__, "4096", str(tmp_path / "cases.json"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_ctc_memory_does_not_grow_beyond_one_pass(engine, tiny, home, tmp_path):
    """60 s of audio to a CTC model runs as 30 s chunks: its peak is one 30 s pass's (the attention of 6000 frames,
    ~600 MB on the tiny fixture), not twice that (ONNX Runtime's memory pattern beside its arena: 1354 MB where one
    pass took 747 MB, before runtime/onnx.py turned the pattern off for waveform models)."""
    one_pass, chunked = _child_peaks(
        engine, tiny, home, tmp_path, [("tiny/wav2vec2-ctc", "@audio 30"), ("tiny/wav2vec2-ctc", "@audio 60")]
    )
    assert one_pass["status"] == chunked["status"] == 200, (one_pass, chunked)
    assert chunked["peak_mb"] < 1.2 * one_pass["peak_mb"], (one_pass["peak_mb"], chunked["peak_mb"])


def test_only_waveform_models_run_without_the_memory_pattern(engine):
    """The memory pattern stays on where inputs are short (it saves time at every generation step)."""
    options = {
        name: engine.preload(f"tiny/{name}").runner.session.get_session_options().enable_mem_pattern
        for name in ("wav2vec2-ctc", "wav2vec2-classifier", "distilbert-sentiment", "vit")
    }
    assert options == {"wav2vec2-ctc": False, "wav2vec2-classifier": False, "distilbert-sentiment": True, "vit": True}


# Extreme images (issue 12: "tiny and extreme-aspect images are answered"), against the transformers pipeline told
# the channel layout: untold, it guesses channels-first for a 1x1 or a 2000x3 image and fails or answers another
# image. "-real": DETR's fixtures with the resize of DETR's own checkpoints (facebook/detr-resnet-50: shortest edge
# 800, longest 1333), under which a 3x2000 image keeps a side of 2 pixels; under the fixtures' 64/96 it has none.
REAL_DETR_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
IMAGE_CASES = [
    ("vit", {}),
    ("yolos", {"threshold": 0.0}),
    ("detr", {"threshold": 0.0}),
    ("detr-real", {"threshold": 0.0}),
    ("segformer", {}),
    ("mobilevit", {"subtask": "semantic"}),
    *[("maskformer", {"subtask": s, "threshold": 0.0}) for s in ("semantic", "instance", "panoptic")],
    *[("detr-panoptic", {"subtask": s, "threshold": 0.0}) for s in ("semantic", "instance", "panoptic")],
    *[("detr-panoptic-real", {"subtask": s, "threshold": 0.0}) for s in ("semantic", "instance", "panoptic")],
]
EXTREME_SIZES = [(1, 1), (3, 2000), (2000, 3)]
# where the pipeline itself fails: the processor resizes one side to 0 pixels (see vision._cannot_prepare)
PIPELINE_FAILS = {(name, size) for name in ("yolos", "detr", "detr-panoptic") for size in ((3, 2000), (2000, 3))}


@pytest.fixture(scope="module")
def image_models(tiny, home, tmp_path_factory) -> tuple[LocalInference, dict[str, Path]]:
    """An engine serving the tiny image models and the two "-real" copies (exported once, here)."""
    import shutil

    from tests.fixtures.tiny_models import TASKS

    root = tmp_path_factory.mktemp("extreme-images")
    folders = {name: tiny[name] for name in {name.removesuffix("-real") for name, _ in IMAGE_CASES}}
    for name in ("detr", "detr-panoptic"):
        copy = shutil.copytree(tiny[name], root / f"{name}-real")
        config = json.loads((copy / "preprocessor_config.json").read_text())
        (copy / "preprocessor_config.json").write_text(json.dumps({**config, "size": REAL_DETR_SIZE}))
        folders[f"{name}-real"] = copy
    lines = []
    for name, folder in folders.items():
        lines += [
            f'[models."tiny/{name}"]',
            f"path = {json.dumps(str(folder))}",
            f'task = "{TASKS[name.removesuffix("-real")]}"',
            "",
        ]
    (root / "models.toml").write_text("\n".join(lines))
    return LocalInference(root / "models.toml", home), folders


class _ChannelsLast:
    """An image processor told the channel layout (the pipelines pass none), for the oracle."""

    def __init__(self, processor) -> None:
        self._processor = processor

    def __call__(self, *args, **kwargs):
        return self._processor(*args, input_data_format="channels_last", **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._processor, name)


@pytest.fixture(scope="module")
def told_pipelines(image_models):
    from transformers import pipeline

    from tests.fixtures.tiny_models import TASKS

    pipes = {}

    def told(name: str):
        if name not in pipes:
            pipes[name] = pipeline(TASKS[name.removesuffix("-real")], model=str(image_models[1][name]))
            pipes[name].image_processor = _ChannelsLast(pipes[name].image_processor)
        return pipes[name]

    return told


def _noise_png(width: int, height: int) -> bytes:
    import numpy as np

    pixels = np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", EXTREME_SIZES, ids=[f"{w}x{h}" for w, h in EXTREME_SIZES])
@pytest.mark.parametrize(
    ("name", "parameters"), IMAGE_CASES, ids=[f"{n}-{p.get('subtask', '')}" for n, p in IMAGE_CASES]
)
def test_extreme_images_answer_as_the_pipeline_told_the_channels(image_models, told_pipelines, name, parameters, size):
    import base64

    from localinfer.media import decode_image
    from tests.conftest import assert_close
    from tests.tasks.test_vision import _masks_equal

    engine, _ = image_models
    data = _noise_png(*size)
    payload = {"inputs": base64.b64encode(data).decode(), "parameters": parameters}
    oracle = told_pipelines(name)
    if (name, size) in PIPELINE_FAILS:
        with pytest.raises(ValueError, match="height and width must be > 0"):
            oracle(decode_image(data), **parameters)
        with pytest.raises(
            BadRequestError,
            match=rf"resizes a {size[0]}x{size[1]} image to (0x\d+|\d+x0) pixels .*"
            r"the transformers pipeline fails on it too",
        ):
            engine.query(f"tiny/{name}", payload)
        return
    expected = oracle(decode_image(data), **parameters)
    answer = engine.query(f"tiny/{name}", payload)
    if "mask" in (expected[0] if expected else {}):
        _masks_equal(answer, expected)
    else:
        assert_close(answer, expected)
    if "subtask" not in parameters or parameters["subtask"] == "semantic":
        assert expected  # classification, detection at threshold 0 and semantic segmentation always answer


@pytest.mark.parametrize(
    ("model", "payload", "where"),
    [
        (CLASSIFIER, {"inputs": ["a"] * 10_000}, "inputs"),
        (
            "tiny/bert-nli",
            {"inputs": "a", "parameters": {"candidate_labels": ["x"] * 10_000}},
            "parameters.candidate_labels",
        ),
        ("tiny/st-cls", {"inputs": {"source_sentence": "a", "sentences": ["b"] * 10_000}}, "inputs.sentences"),
    ],
)
def test_a_10000_item_list_is_400_naming_the_limit(engine, model, payload, where):
    with pytest.raises(BadRequestError) as info:
        engine.query(model, payload)
    assert info.value.body == {
        "error": f"{where}: a list of 10000 items; the limit is 1024 (Limits(max_list_items=...), --max-list-items)"
    }


def test_relative_position_generation_model_without_a_window_reads_512_tokens(tiny, home, tmp_path):
    """A T5-like model whose tokenizer and config name no window (relative positions) reads DEFAULT_WINDOW (512)
    tokens of a long input (without a bound, 20000 words outgrew a 4 GB device), and answers it as a copy told
    `model_max_length: 512` does."""
    import shutil

    from localinfer.tasks.generation import DEFAULT_WINDOW, generation_tokenizer

    def copy(name: str, max_length: int | None) -> str:
        folder = shutil.copytree(tiny["t5"], tmp_path / name)
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings.pop("model_max_length", None)
        if max_length:
            settings["model_max_length"] = max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
        return str(folder)

    (tmp_path / "models.toml").write_text("")
    engine = LocalInference(tmp_path / "models.toml", home)
    unbounded, told = copy("t5-no-window", None), copy("t5-512", DEFAULT_WINDOW)
    text = " ".join(["Paris is a city. The tower is tall, that is a happy person."] * 600)
    task = "text2text-generation"
    model = engine.preload(unbounded, task=task)
    tokenizer = generation_tokenizer(model)
    assert tokenizer.model_max_length > 1e29 and "n_positions" not in model.config  # it names no window
    handler = engine.resolve(unbounded, task)[1]
    encoded = handler.encode(model, tokenizer, task, text, "", None, None)
    assert encoded["input_ids"].shape == (1, DEFAULT_WINDOW)
    assert engine.query(unbounded, {"inputs": text}, task=task) == engine.query(told, {"inputs": text}, task=task)
