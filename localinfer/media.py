"""Audio and image decoding, and mask encoding, as the hosted API decoded request bodies."""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

import numpy as np

from . import limits
from .errors import BadRequestError, InferenceError


def decode_audio(data: bytes, sampling_rate: int) -> np.ndarray:
    """Any container and codec FFmpeg reads -> mono float32 at `sampling_rate`.

    PyAV bundles FFmpeg, so no system package is needed; its resampler mixes the channels down
    and converts the rate, as ffmpeg's `-ac 1 -ar <rate> -f f32le` did for the hosted API.
    """
    import av

    if not data:
        raise BadRequestError("Malformed soundfile")
    limit_seconds = limits.current().max_audio_seconds
    limit = int(limit_seconds * sampling_rate)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadRequestError("Malformed soundfile")
            declared = (container.duration or 0) / 1_000_000
            if declared > limit_seconds:  # refused before decoding a sample
                raise limits.audio_too_long(declared)
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            chunks = []
            decoded = 0
            for frame in container.decode(stream):
                for resampled in resampler.resample(frame):
                    chunks.append(resampled.to_ndarray().reshape(-1))
                    decoded += chunks[-1].size
                if decoded > limit:  # a container that declares no (or a false) duration
                    raise limits.audio_too_long(decoded / sampling_rate)
            for resampled in resampler.resample(None):  # flush what the resampler holds back
                chunks.append(resampled.to_ndarray().reshape(-1))
    except InferenceError:
        raise
    except Exception:  # PyAV raises a family of FFmpeg errors for bytes that are not audio
        raise BadRequestError("Malformed soundfile") from None
    if not chunks:
        raise BadRequestError("Malformed soundfile")
    return np.concatenate(chunks).astype(np.float32, copy=False)  # already float32: no second copy of the samples


def audio_seconds(data: Any) -> float:
    """The duration the container declares (0 when it declares none or is not audio)."""
    if not isinstance(data, bytes):
        return 0.0
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return (container.duration or 0) / 1_000_000
    except Exception:
        return 0.0


def check_bounds(media: str, data: Any) -> float:
    """The bounds an image's or an audio file's header shows, checked before the result cache is consulted, so that
    a request beyond a bound is refused whether or not its answer is cached. Decoding checks them again (and what
    a header does not show). Returns an audio file's declared seconds (0 for an image)."""
    if not isinstance(data, bytes):
        return 0.0
    if media == "audio":
        declared = audio_seconds(data)
        if declared > limits.current().max_audio_seconds:
            raise limits.audio_too_long(declared)
        return declared
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            size = Image.open(io.BytesIO(data)).size
    except Exception:  # not an image, or a bomb: decoding answers it
        return 0.0
    too_large = limits.image_too_large(*size)
    if too_large is not None:
        raise too_large
    return 0.0


def decode_image(data: bytes) -> Any:
    """Any image Pillow reads -> an RGB image, EXIF orientation applied (as the transformers pipelines load them)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound decides, below
            image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
        too_large = limits.image_too_large(*image.size)
        if too_large is not None:
            raise too_large
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.info.pop("exif", None)  # applied above; a damaged block would fail whatever reads it again
        return image
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's own bound: Pillow refuses to open it
        raise BadRequestError(f"inputs: {exc} ({limits.Limits.setting('max_image_pixels')} cannot raise it)") from None
    except InferenceError:
        raise
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadRequestError("inputs: the body is not an image Pillow can read") from None
    except Exception as exc:  # Pillow's plugins raise what they meet (SyntaxError from a damaged EXIF block, ...)
        raise BadRequestError(f"inputs: the image is damaged ({type(exc).__name__}: {exc})") from None


def encode_mask(mask: Any) -> str:
    """A mask (PIL image or array) -> base64 PNG, single channel (mode L)."""
    from PIL import Image

    image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask).astype(np.uint8))
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
