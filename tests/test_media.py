"""Decoding: audio of any container to mono float32 at the model's rate; images to RGB; masks to PNG."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

from localinfer import BadRequestError
from localinfer.media import decode_audio, decode_image, encode_mask

SAMPLES = Path(__file__).parent / "samples"


@pytest.mark.parametrize(
    ("name", "rate", "samples"),
    [
        ("sample1.flac", 16000, 219040),
        ("sample1.flac", 48000, 657120),
        ("sample1.flac", 8000, 109520),
        ("sample1_dual.ogg", 16000, 219040),
    ],
)
def test_audio_lengths(name, rate, samples):
    audio = decode_audio((SAMPLES / name).read_bytes(), rate)
    assert audio.shape == (samples,) and audio.dtype == np.float32 and 0.1 < np.abs(audio).max() <= 1


def test_lossy_webm_within_a_few_milliseconds():
    audio = decode_audio((SAMPLES / "sample1.webm").read_bytes(), 16000)
    assert abs(len(audio) - 219040) < 16000 * 0.01


def test_wav_mp3_and_m4a_too(tmp_path):
    """Encode the flac to other containers with PyAV, then decode them back."""
    import av

    source = decode_audio((SAMPLES / "sample1.flac").read_bytes(), 16000)
    for container, codec in (("wav", "pcm_s16le"), ("mp3", "mp3"), ("m4a", "aac")):
        path = tmp_path / f"speech.{container}"
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=16000, layout="mono")
            frame = av.AudioFrame.from_ndarray((source[None] * 32767).astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        decoded = decode_audio(path.read_bytes(), 16000)
        assert abs(len(decoded) - len(source)) < 16000 * 0.1, container


@pytest.mark.parametrize("data", [(SAMPLES / "malformed.flac").read_bytes(), b"", b"not audio at all"])
def test_undecodable_audio_is_malformed_soundfile(data):
    with pytest.raises(BadRequestError) as info:
        decode_audio(data, 16000)
    assert info.value.status == 400 and info.value.body == {"error": "Malformed soundfile"}


def test_image_is_rgb_with_exif_orientation(tmp_path):
    from PIL import Image

    image = decode_image((SAMPLES / "plane.jpg").read_bytes())
    assert image.mode == "RGB" and image.size == (300, 200)
    rotated = Image.new("L", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)


def test_undecodable_image_is_400():
    with pytest.raises(BadRequestError, match="not an image"):
        decode_image(b"\x89PNG not really")


def test_mask_is_a_single_channel_png():
    from PIL import Image

    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10] = 255
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_mask(mask))))
    assert decoded.mode == "L" and decoded.size == (30, 20) and np.array_equal(np.asarray(decoded), mask)
