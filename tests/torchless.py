"""Run code in a fresh interpreter that sees the installed packages except PyTorch and the export-side libraries.

The child's only packages are symbolic links to those of this environment, less `torch` (and `functorch`,
`torchgen`), `optimum` and `sentence_transformers` (and any named in `without`): what a runtime-only install
has, so `transformers` finds no torch and behaves as it would there. The models it serves are ONNX exports made
beforehand, named by folder in a models.toml (an export folder holds its config, tokenizer and processor files):
without optimum and torch the engine cannot export, and its export folders are keyed by the export libraries'
versions, which the child does not have.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT_SIDE = ("torch", "functorch", "torchgen", "optimum", "optimum_onnx", "sentence_transformers")


def _top_name(entry: Path) -> str:
    """`torch-2.13.0+cpu.dist-info` -> `torch`, `sentence_transformers` -> itself."""
    name = entry.name
    for suffix in (".dist-info", ".egg-info", ".libs", ".pth"):
        if name.endswith(suffix):
            name = name[: -len(suffix)].split("-")[0]
    return name.replace("-", "_").lower()


def packages_without(folder: Path, without: tuple[str, ...]) -> Path:
    """A folder of links to this environment's packages, less the export side and `without`."""
    blocked = {name.lower() for name in (*EXPORT_SIDE, *without)}
    folder.mkdir(parents=True, exist_ok=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if _top_name(entry) not in blocked and not entry.name.endswith(".pth"):
            (folder / entry.name).symlink_to(entry)
    return folder


def run_without_torch(code: str, folder: Path, *, without: tuple[str, ...] = ()) -> dict:
    """Run `code` in a child that has no torch; it prints one JSON line last, which is returned.

    `python -S` skips site-packages (and its .pth files); the child's path is this checkout, then the links.
    """
    env = {"PYTHONPATH": str(packages_without(folder / "site-packages", without)), "PATH": "/usr/bin:/bin"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
