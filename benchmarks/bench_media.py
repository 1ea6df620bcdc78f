"""Audio and vision benchmark (issue 5): each task through localinfer (ONNX Runtime) against the transformers
pipeline (PyTorch), same model and inputs, in one run.

Run: python benchmarks/bench_media.py    (writes benchmarks/results/media.json)
     python benchmarks/bench_media.py --quick    (2-layer models, one repetition: proves it runs, times nothing)

Models: random weights at real sizes (speed does not depend on the weights): wav2vec2-base (12 layers,
768 wide) for CTC speech recognition and audio classification, Whisper-tiny (4+4 layers, 384 wide),
ViT-base (12 layers, 768 wide), YOLOS-tiny (12 layers, 192 wide), SegFormer-b0. Inputs: the 13.7 s speech
sample and the 300x200 photo, decoded once per request as a user's request would be. Both sides' answers are
asserted equal (labels, texts, boxes and mask pixels equal, scores within 1e-4) before a ratio is reported.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save, timed  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "samples"
LABELS = {i: f"label_{i}" for i in range(10)}
# The API's defaults where the pipeline's differ (its audio classification returns every label), so that both sides
# do the same work and can be compared.
CONTRACT_DEFAULTS = {"audio-classification": {"top_k": 5}}
# Parameters of a second, untimed agreement check where the timed request's answer may be empty.
AGREEMENT_ALSO = {"object-detection": {"threshold": 0.0}}
# --quick: 2 layers, narrow, in place of each real size.
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
WAV2VEC2 = {**SMALL, "conv_dim": (32,) * 7} if QUICK else {}
VIT = SMALL if QUICK else {}
YOLOS = {"hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768}
YOLOS = {**YOLOS, "num_hidden_layers": 2} if QUICK else YOLOS


def build(root: Path) -> dict[str, tuple[str, Path]]:
    import torch
    import transformers as tf

    from tests.fixtures.tiny_models import whisper

    torch.manual_seed(0)
    out: dict[str, tuple[str, Path]] = {}

    def keep(name, task, model, processor):
        folder = root / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        out[name] = (task, folder)

    ctc_dir = root / "wav2vec2-ctc"
    tiny_ctc = __import__("tests.fixtures.tiny_models", fromlist=["wav2vec2_ctc"]).wav2vec2_ctc(ctc_dir)
    processor = tf.Wav2Vec2Processor.from_pretrained(tiny_ctc)
    keep(
        "wav2vec2-ctc",
        "automatic-speech-recognition",
        tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(vocab_size=32, pad_token_id=0, **WAV2VEC2)),
        processor,
    )
    keep(
        "wav2vec2-classifier",
        "audio-classification",
        tf.Wav2Vec2ForSequenceClassification(
            tf.Wav2Vec2Config(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **WAV2VEC2)
        ),
        tf.Wav2Vec2FeatureExtractor(return_attention_mask=True),
    )
    whisper_dir = whisper(root / "whisper-small-vocab")
    config = tf.WhisperConfig.from_pretrained(whisper_dir)
    config.update(
        {}  # --quick: the tests' tiny Whisper as it is
        if QUICK
        else {
            "d_model": 384,
            "encoder_layers": 4,
            "decoder_layers": 4,
            "encoder_attention_heads": 6,
            "decoder_attention_heads": 6,
            "encoder_ffn_dim": 1536,
            "decoder_ffn_dim": 1536,
            "max_target_positions": 448,
            # A real checkpoint's scale: the tests' fixture initialises at 0.5 so that a 32-wide model's transcript
            # depends on the audio; at 384 wide that overflows into near-ties that flip between the two runtimes.
            "init_std": 0.02,
        }
    )
    model = tf.WhisperForConditionalGeneration(config)
    model.generation_config = tf.GenerationConfig.from_pretrained(whisper_dir)
    keep("whisper", "automatic-speech-recognition", model, tf.WhisperProcessor.from_pretrained(whisper_dir))
    keep(
        "vit",
        "image-classification",
        tf.ViTForImageClassification(tf.ViTConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **VIT)),
        tf.ViTImageProcessor(),
    )
    keep(
        "yolos",
        "object-detection",
        tf.YolosForObjectDetection(
            tf.YolosConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **YOLOS)
        ),
        tf.YolosImageProcessor(size={"shortest_edge": 512, "longest_edge": 864}),
    )
    keep(
        "segformer",
        "image-segmentation",
        tf.SegformerForSemanticSegmentation(
            tf.SegformerConfig(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
        ),
        tf.SegformerImageProcessor(),
    )
    return out


def decoded_masks(answer):
    """localinfer's segmentation masks (base64 PNG, as the API sends them) as images, as the pipeline gives them."""
    import base64
    import io

    from PIL import Image

    if isinstance(answer, list) and answer and isinstance(answer[0], dict) and "mask" in answer[0]:
        return [{**s, "mask": Image.open(io.BytesIO(base64.b64decode(s["mask"])))} for s in answer]
    return answer


def main() -> None:
    import torch
    from transformers import pipeline

    from localinfer import LocalInference
    from localinfer.media import decode_audio, decode_image

    root = Path(tempfile.mkdtemp(prefix="localinfer-bench-media-"))
    models = build(root)
    toml = root / "models.toml"
    toml.write_text("".join(f'[models."bench/{n}"]\npath = "{f}"\ntask = "{t}"\n\n' for n, (t, f) in models.items()))
    engine = LocalInference(toml, root / "home")
    audio, image = (SAMPLES / "sample1.flac").read_bytes(), (SAMPLES / "plane.jpg").read_bytes()
    results: dict = {"torch_threads": torch.get_num_threads()}
    for name, (task, folder) in models.items():
        engine.preload(f"bench/{name}")
        pipe = pipeline(task, model=str(folder))
        body = audio if "audio" in task or "speech" in task else image

        def theirs(pipe=pipe, task=task, body=body, **parameters):
            kwargs = {**CONTRACT_DEFAULTS.get(task, {}), **parameters}
            if body is audio:
                rate = pipe.feature_extractor.sampling_rate
                return pipe({"raw": decode_audio(body, rate), "sampling_rate": rate}, **kwargs)
            return pipe(decode_image(body), **kwargs)

        def ours(name=name, body=body, **parameters):
            return engine.query(
                f"bench/{name}",
                {
                    "inputs": __import__("base64").b64encode(body).decode(),
                    "parameters": parameters,
                    "options": {"use_cache": False},
                },
            )

        agreed = decoded_masks(ours())
        assert_same(agreed, theirs(), name)
        if task in AGREEMENT_ALSO:  # random weights detect nothing at the default threshold: compare everything too
            assert_same(ours(**AGREEMENT_ALSO[task]), theirs(**AGREEMENT_ALSO[task]), f"{name} {AGREEMENT_ALSO[task]}")
        repeat = 1 if QUICK else 5
        pairs = [(timed(ours, repeat=1, warmup=0)[0], timed(theirs, repeat=1, warmup=0)[0]) for _ in range(repeat)]
        ours_s, theirs_s = median([p[0] for p in pairs]), median([p[1] for p in pairs])
        results[name] = {
            "task": task,
            "localinfer_s": round(ours_s, 4),
            "pipeline_s": round(theirs_s, 4),
            "ratio": round(theirs_s / ours_s, 2),
            "answer_items_compared": len(agreed) if isinstance(agreed, list) else 1,
        }
        print(name, json.dumps(results[name]), flush=True)
    path = save(results_name("media"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
