"""Fingerprints: what identifies a model's weights and the software that shapes its ONNX graph."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from importlib import metadata
from pathlib import Path

# Files that do not change what a model computes.
_IGNORED_SUFFIXES = {".md", ".txt.lock", ".lock"}
_lock = threading.Lock()


def folder_fingerprint(folder: Path, memo_path: Path | None = None) -> str:
    """SHA-256 over every file of `folder` (relative name and content digest).

    Digests are memoised in `memo_path` by (size, mtime), so a 90 MB model is read once, not
    at every start.
    """
    with _lock:
        memo = _read_memo(memo_path)
        changed = False
        total = hashlib.sha256()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if relative.startswith(".") or "/." in relative or path.suffix in _IGNORED_SUFFIXES:
                continue
            stat = path.stat()
            key = str(path.resolve())
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = memo.get(key)
            if entry is None or entry[:2] != stamp:
                with path.open("rb") as handle:
                    entry = [*stamp, hashlib.file_digest(handle, "sha256").hexdigest()]
                memo[key] = entry
                changed = True
            total.update(f"{relative}\0{entry[2]}\n".encode())
        if changed and memo_path is not None:
            _write_memo(memo_path, memo)
        return total.hexdigest()


def graph_versions() -> dict[str, str]:
    """Versions of the libraries that decide what an export contains."""
    versions = {}
    for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "sentence-transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def _read_memo(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(path: Path, memo: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump(memo, handle)
        os.replace(handle.name, path)
    except OSError:
        pass  # the memo only saves time
