"""Peak resident memory per request against input length (issue 12): flat beyond each model's window.

Run: python benchmarks/bench_bounds.py [--quick] [--only NAME,...]    (writes benchmarks/results/bounds.json)

One model per family (the tests' tiny models, exported here first): a text encoder (distilbert sentiment), a
causal generator (GPT-2), an encoder-decoder (BART summarization), CTC speech recognition (wav2vec2), Whisper and
audio classification (wav2vec2). Each request runs in a fresh child process (tests/fixtures/bounded_child.py,
under a 4 GB address-space limit, without torch) so that its peak resident memory is its own: text of 100 to
50000 words, audio of 10 s to 60 min (noise at 16 kHz, as WAV). The figure is the child's peak resident memory
after the one request, and its status (200, or the 4xx that names a bound).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from checks import QUICK, results_name  # noqa: E402
from common import save  # noqa: E402

from tests.fixtures import bounded_child  # noqa: E402
from tests.fixtures.tiny_models import BUILDERS, write_models_toml  # noqa: E402

WORDS = [100, 1000] if QUICK else [100, 1000, 10000, 50000]
SECONDS = [10, 30, 60] if QUICK else [10, 30, 60, 600, 3600]  # 30 s: the longest one pass (max_unchunked_audio_seconds)
FAMILIES = {
    "distilbert-sentiment": ("text", {}),
    "gpt2": ("text", {"do_sample": False, "max_new_tokens": 5}),
    "bart": ("text", {"max_length": 10}),
    "wav2vec2-ctc": ("audio", {}),
    "whisper": ("audio", {}),
    "wav2vec2-classifier": ("audio", {}),
}


def main() -> None:
    from localinfer import LocalInference

    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(FAMILIES)
    families = {name: FAMILIES[name] for name in only}
    results: dict = {"limit_mb": 4096, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = {name: BUILDERS[name](root / "models" / name) for name in families}
        toml = write_models_toml(root / "models.toml", folders)
        engine = LocalInference(toml, root / "home")
        for name in families:
            engine.export(f"tiny/{name}")  # needs torch: here, so that the children only load
        env = {**os.environ, "LOCALINFER_HOME": str(root / "home"), "LOCALINFER_MODELS": str(toml), "USE_TORCH": "0"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout
        for name, (kind, parameters) in families.items():
            rows = []
            for size in WORDS if kind == "text" else SECONDS:
                inputs = f"@words {size}" if kind == "text" else f"@audio {size}"
                cases = root / "cases.json"
                payload = {"inputs": inputs, "parameters": parameters}
                cases.write_text(json.dumps([{"model": f"tiny/{name}", "payload": payload}]))
                out = root / "out.json"
                out.unlink(missing_ok=True)
                done = subprocess.run(
                    [sys.executable, bounded_child.__file__, "4096", str(cases), str(out)],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=root,
                )
                if done.returncode != 0 or not out.is_file():
                    raise SystemExit(f"{name} {inputs}: the child failed\n{done.stderr[-2000:]}")
                result = json.loads(out.read_text())[0]
                assert result["status"] < 500, (name, inputs, result)
                rows.append({"size": size, "status": result["status"], "peak_mb": round(result["peak_mb"])})
                print(name, inputs, rows[-1], flush=True)
            results["families"][name] = {"unit": "words" if kind == "text" else "seconds", "rows": rows}
    path = save(results_name("bounds"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
