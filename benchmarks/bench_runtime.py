"""The runtime without PyTorch (issue 10): install size, a new process's first answer, and resident memory.

Run: python benchmarks/bench_runtime.py [--baseline CHECKOUT] [--quick]    (writes benchmarks/results/runtime.json)

Needs the README's two environments: `.venv` (full install, runs this script) and `.venv-runtime` (the runtime
alone). It measures
- the size on disk of each environment (pip included), against the issue's target of 600 MB for the runtime;
- a new process's first MiniLM answer from a folder written by `localinfer export --out`, process start to
  printed answer, in the runtime-only environment (target under 0.5 s) and in the full one;
- the peak resident memory (VmHWM) of one process holding MiniLM, a ViT-base image classifier and a
  wav2vec2-base audio classifier (bench_media's models, random weights at real sizes) and answering one request
  each: the runtime-only environment on the exported folders, the full environment on the same folders, and, with
  `--baseline CHECKOUT` (a git worktree of an older commit), that commit's code on the source folders (its own
  route, e.g. the pipelines around optimum's ORTModel classes). Every process's answers are asserted equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import median, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PYTHON = ROOT / ".venv-runtime" / "bin" / "python"
SAMPLES = ROOT / "tests" / "samples"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EXAMPLE = {"source_sentence": "That is a happy person", "sentences": ["That is a happy dog", "Today is a sunny day"]}

# One process holding the three models: each answers once, then the process reports its peak resident memory.
HOLDER = f"""
EXAMPLE = {EXAMPLE!r}
import json, sys, time
started = time.perf_counter()
import localinfer
answers = []
for folder, kind, task in json.loads(sys.argv[1]):
    inputs = EXAMPLE if kind == "text" else open(kind, "rb").read()
    answers.append(localinfer.query(folder, {{"inputs": inputs, "options": {{"use_cache": False}}}}, task=task))
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({{"answers": answers, "hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "rss_mb": int(status["VmRSS"].split()[0]) / 1024, "seconds": time.perf_counter() - started,
                  "torch": "torch" in sys.modules}}))
"""


def size_mb(folder: Path) -> float:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() or p.is_symlink()) / 1e6


def run_child(python: Path, code: str, *args: str, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([str(python), "-c", code, *args], env=env, capture_output=True, text=True, cwd=env["HOME"])
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def main() -> None:
    import bench_media

    from localinfer import LocalInference

    if not RUNTIME_PYTHON.is_file():
        raise SystemExit(f"{RUNTIME_PYTHON} is missing: run the README's set-up command")
    baseline = None
    if "--baseline" in sys.argv:
        baseline = Path(sys.argv[sys.argv.index("--baseline") + 1]).resolve()
    results: dict = {
        "size_mb": {"runtime_only": round(size_mb(ROOT / ".venv-runtime")), "full": round(size_mb(ROOT / ".venv"))}
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        built = bench_media.build(tmp_path / "models")
        engine = LocalInference(home=tmp_path / "home")
        sources = {"minilm": engine.resolve(MINILM)[0].path, "vit": built["vit"][1]}
        sources["audio"] = built["wav2vec2-classifier"][1]
        tasks = {"minilm": "sentence-similarity", "vit": "image-classification", "audio": "audio-classification"}
        shipped = {
            name: engine.export_to(str(folder), tmp_path / "shipped" / name, task=tasks[name])
            for name, folder in sources.items()
        }
        inputs = {"minilm": "text", "vit": str(SAMPLES / "plane.jpg"), "audio": str(SAMPLES / "sample1.flac")}

        def env(name: str, pythonpath: Path | None = None) -> dict:
            home = tmp_path / name
            home.mkdir(exist_ok=True)
            out = {**os.environ, "LOCALINFER_HOME": str(home / "cache"), "HOME": str(home)}
            out.pop("PYTHONPATH", None)
            if pythonpath is not None:
                out["PYTHONPATH"] = str(pythonpath)
            return out

        # A new process's first MiniLM answer from the shipped folder.
        first = (
            f"import json, localinfer; print(json.dumps(localinfer.query({str(shipped['minilm'])!r}, "
            f"{{'inputs': {EXAMPLE!r}, 'options': {{'use_cache': False}}}})))"
        )
        reference = engine.query(MINILM, {"inputs": EXAMPLE})
        results["first_answer_s"] = {}
        for label, python in (("runtime_only", RUNTIME_PYTHON), ("full", Path(sys.executable))):
            walls = []
            for _ in range(1 if QUICK else 5):
                wall, out = run_child(python, first, env=env(f"first-{label}"))
                walls.append(wall)
                assert_same(json.loads(out), reference, f"first answer ({label})")
            results["first_answer_s"][label] = round(median(walls), 3)

        # One process holding three models.
        expected = None
        results["holder"] = {}
        runs = [
            ("runtime_only", RUNTIME_PYTHON, shipped, None),
            ("full_on_shipped", Path(sys.executable), shipped, None),
        ]
        if baseline is not None:
            runs.append(("baseline_on_sources", Path(sys.executable), sources, baseline))
        for label, python, folders, pythonpath in runs:
            spec = json.dumps([[str(folders[name]), inputs[name], tasks[name]] for name in ("minilm", "vit", "audio")])
            if pythonpath is not None:  # warm its exports first, so the measured process only loads them
                run_child(python, HOLDER, spec, env=env(label, pythonpath))
            _, out = run_child(python, HOLDER, spec, env=env(label, pythonpath))
            report = json.loads(out)
            expected = expected or report["answers"]
            assert_same(report["answers"], expected, f"holder ({label})")
            results["holder"][label] = {
                "peak_rss_mb": round(report["hwm_mb"]),
                "rss_mb": round(report["rss_mb"]),
                "seconds": round(report["seconds"], 2),
                "imported_torch": report["torch"],
            }
        if baseline is not None:
            results["baseline"] = str(baseline)
    path = save(results_name("runtime"), results)
    print(json.dumps(results, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
