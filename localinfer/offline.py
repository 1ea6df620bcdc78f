"""Keeps the libraries localinfer loads off the network: their telemetry off, the Hugging Face Hub offline.

localinfer reads local files only, but two libraries it loads reach out on their own. ONNX Runtime's official
builds (1.32) start Microsoft's 1DS telemetry with the runtime: DNS lookups of mobile.events.data.microsoft.com
some 9, 14, 23 and 44 s after a session is created. huggingface_hub (used by transformers, optimum and
sentence-transformers) sends usage telemetry and may ask the Hub for files. Each library reads its switch from
the environment once, when it is imported, so `go_offline` must run before anything imports them:
`localinfer/__init__.py` calls it first thing, which covers the library, the CLI, the server and the benchmarks.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("localinfer")

# Always set: nothing leaves the machine, whatever the environment says.
TELEMETRY_OFF = {
    # ONNX Runtime's 1DS telemetry (onnxruntime/Privacy.md). Read when onnxruntime is imported; setting it after
    # the import, or calling onnxruntime.disable_telemetry_events(), leaves the lookups on (measured with strace).
    "ORT_DISABLE_TELEMETRY": "1",
    # huggingface_hub.utils.send_telemetry and transformers' example telemetry; huggingface_hub also reads the
    # two generic names below (https://consoledonottrack.com).
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    # Ray's usage statistics (ray/_common/usage/usage_lib.py), for `localinfer.ray`'s clusters and workers.
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Set unless the user set them: localinfer itself never downloads (it loads with local_files_only), but these
# switches hold for the whole process, so a program that imports localinfer and downloads from the Hub itself
# may say HF_HUB_OFFLINE=0 before the import.
OFFLINE_BY_DEFAULT = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean variable


def go_offline() -> None:
    """Set every switch that keeps onnxruntime, huggingface_hub, transformers, optimum and sentence-transformers
    off the network. Idempotent. For a library imported before this runs, patch what is read at call time and log
    one warning for what cannot be changed any more."""
    ort_too_late = "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY") != "1"
    os.environ.update(TELEMETRY_OFF)
    # HF_HUB_OFFLINE=0 alone means online for huggingface_hub; carry the user's choice to the other name.
    choice = next((os.environ[name] for name in OFFLINE_BY_DEFAULT if name in os.environ), "1")
    for name in OFFLINE_BY_DEFAULT:
        os.environ.setdefault(name, choice)
    offline = choice.strip().upper() in _TRUE

    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:  # read as module attributes at call time, so this still takes effect
        hub_constants.HF_HUB_DISABLE_TELEMETRY = True
        hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE or offline
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_is_offline_mode"):
        transformers_hub._is_offline_mode = transformers_hub._is_offline_mode or offline
    if ort_too_late:
        log.warning(
            "onnxruntime was imported before localinfer, so its telemetry (DNS lookups of "
            "mobile.events.data.microsoft.com) stays on in this process: import localinfer first, or set "
            "ORT_DISABLE_TELEMETRY=1 in the environment"
        )
