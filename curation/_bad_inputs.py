"""The bad-input corpus of `curation.synthetic --bad`: files a curation run must survive.

`expect` says what a pipeline should record: "error" (unreadable), "rejected" (readable but
unusable), "ok" (awkward but valid: must be processed), "skipped" (not a video: audio, image,
text, unknown extension), "any" (must get a row with a reason; the decoder may or may not recover).
A hidden file (`.hidden.mp4`) is written too: the only kind of file that gets no row.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _gradient_frames(n: int, width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 215, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(n):
        wave = 40 * np.sin(2 * np.pi * (xx + 3 * k) / max(width, 8) + yy / max(height, 8))
        yield np.clip(base[None, None, :] + wave[..., None], 0, 255).astype(np.uint8)


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=22050)
        stream.layout = "mono"
        t = np.arange(22050 * 2) / 22050
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 22050
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_bad_inputs(out: Path, rng: np.random.Generator) -> list[dict]:
    """Write the corpus into `out`; return its manifest entries."""
    from curation.synthetic import encode_video

    out.mkdir(parents=True, exist_ok=True)
    entries = []

    def add(name: str, kind: str, expect: str, why: str) -> None:
        entries.append({"file": f"bad/{name}", "kind": kind, "expect": expect, "why": why})

    (out / "zero_byte.mp4").write_bytes(b"")
    add("zero_byte.mp4", "zero_byte", "error", "empty file")

    good = out / "_good.mp4"  # moov atom at the end, so a truncated copy has no index
    encode_video(good, _gradient_frames(48, 96, 64, 1), Fraction(24), 96, 64, faststart=False)
    data = good.read_bytes()
    (out / "truncated.mp4").write_bytes(data[: len(data) * 2 // 5])
    add("truncated.mp4", "truncated", "error", "first 40% of an mp4 whose index (moov) is at the end")

    corrupted = bytearray(data)
    mid = len(corrupted) // 2
    corrupted[mid : mid + 2048] = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
    (out / "corrupted_mid.mp4").write_bytes(bytes(corrupted))
    add("corrupted_mid.mp4", "corrupted_mid", "any", "2 KiB of random bytes inside the video data")
    good.unlink()

    (out / "random_bytes.mp4").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    add("random_bytes.mp4", "random_bytes", "error", "not a video at all")

    _write_audio_only(out / "audio_only.mp4")
    add("audio_only.mp4", "audio_only", "rejected", "no video stream (2 s AAC tone)")

    _write_audio_only(out / "voice_memo.m4a")
    add("voice_memo.m4a", "audio_m4a", "skipped", "audio-only .m4a: not a video extension")
    import cv2

    cv2.imwrite(str(out / "still.png"), next(_gradient_frames(1, 32, 24, 7)))
    add("still.png", "image", "skipped", "an image, not a video")
    (out / "notes.txt").write_text("shot list\n")
    add("notes.txt", "text", "skipped", "a text file")
    (out / "data.xyz").write_bytes(b"\x01\x02")
    add("data.xyz", "unknown_extension", "skipped", "an extension discovery does not know")
    (out / "not_a_video.mov").write_text("this is not a QuickTime movie\n")
    add("not_a_video.mov", "fake_mov", "error", "a .mov holding text")
    (out / ".hidden.mp4").write_bytes(b"")  # hidden: the only files (with OUT) without a row

    encode_video(out / "one_frame.mp4", _gradient_frames(1, 96, 64, 2), Fraction(25), 96, 64)
    add("one_frame.mp4", "one_frame", "rejected", "a single frame: too short for any clip")

    # awkward but valid
    encode_video(
        out / "odd_dims_97x61.mp4", _gradient_frames(72, 97, 61, 3), Fraction(24), 97, 61, pix_fmt="yuv444p"
    )
    add("odd_dims_97x61.mp4", "odd_dimensions", "any", "97x61, yuv444p (4:2:0 needs even sizes)")

    encode_video(
        out / "naïve clip — ünïcode name.mp4", _gradient_frames(72, 128, 72, 4), Fraction(24), 128, 72
    )
    add("naïve clip — ünïcode name.mp4", "unicode_name", "ok", "unicode and spaces in the file name")

    n = 72  # variable frame rate: irregular gaps between timestamps (units of 1/24000 s)
    gaps = rng.choice([1000, 1000, 1000, 2000, 500], size=n)
    pts = np.concatenate([[0], np.cumsum(gaps)[:-1]]).astype(int).tolist()
    encode_video(out / "variable_fps.mp4", _gradient_frames(n, 128, 72, 5), Fraction(24), 128, 72, pts=pts)
    add("variable_fps.mp4", "variable_fps", "any", "timestamps with irregular gaps (VFR)")

    encode_video(out / "large_3840x2160.mp4", _gradient_frames(12, 3840, 2160, 6), Fraction(24), 3840, 2160)
    add("large_3840x2160.mp4", "large_frames", "any", "4K frames, 0.5 s")
    return entries
