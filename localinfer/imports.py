"""transformers imported safely from several threads.

Two threads importing from transformers for the first time at once fail: `ImportError: cannot import name
'AutoConfig' from 'transformers'` (reproduced in 4 runs of 5 with one thread importing optimum's exporter and
another `AutoTokenizer`). transformers' `_LazyModule` resolves names by importing their modules on first use, and two
threads' imports of its interdependent base modules meet in a cycle that Python's import locks resolve by handing
one thread a partly initialised module. localinfer loads models on background threads while requests run, so every
localinfer function that imports from transformers (or optimum, which imports it) first calls `transformers_ready()`:
the base modules are imported once per process, by one thread, and later imports only touch model-specific modules.
"""

from __future__ import annotations

import threading

# The names whose modules import transformers' shared base modules (configuration, tokenization, feature extraction,
# image processing, processing and generation utilities).
_BASE = (
    "AutoConfig",
    "AutoTokenizer",
    "AutoFeatureExtractor",
    "AutoImageProcessor",
    "AutoProcessor",
    "GenerationConfig",
)
_lock = threading.Lock()
_ready = False

# Building a PyTorch model (an export, or the PyTorch route's load) one at a time per process: transformers builds
# models under process-wide switches (the default device and dtype, `init_empty_weights`), so two threads building
# at once interfere: two exports at once failed with "Tensor on device meta is not on the expected device cpu"
# (a server exporting the models of models.toml on its loading threads). Exports are CPU-bound, so little is lost.
TORCH_BUILD_LOCK = threading.RLock()


def transformers_ready() -> None:
    """Import transformers' base modules once per process, one thread at a time (the others wait)."""
    global _ready
    if _ready:
        return
    with _lock:
        if not _ready:
            import transformers

            for name in _BASE:
                getattr(transformers, name)
            _ready = True
