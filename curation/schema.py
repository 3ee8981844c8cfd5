"""The shard sample contract (DESIGN.md §2), in one small module that `datamodules` and
`lightning_modules` may import without pulling in the rest of `curation`.

A shard is a plain WebDataset tar: every member of one sample shares a key (no dots, no slashes)
and the extension names the field. Any webdataset user reads it with
`webdataset.WebDataset(url)` and no project code:

    key.mp4      H.264 yuv420p, exactly the clip's frames; constant fps, except a variable-rate
                 source's clip kept at its true frame times (json timing.variable_fps)
    key.txt      the chosen caption (utf-8)
    key.json     ClipMeta below, as a JSON object
    key.emb.npy  CLIP image embedding, float16, shape (D,) (only when captioning ran)
    key.latent.npy  optional precomputed latents, float16 (C, T, H, W)

Only the standard library is imported here on purpose.
"""

from __future__ import annotations

import re

PIPELINE_VERSION = "0.1.0"

# webdataset field names (the extension after the key's first dot)
MP4 = "mp4"
TXT = "txt"
JSON = "json"
EMB = "emb.npy"
LATENT = "latent.npy"

SPLITS = ("train", "val")
SHARD_PATTERN = "{split}-%06d.tar"  # under OUT/shards/
SHARD_INDEX = "index.json"  # OUT/shards/index.json
# the motion scores a clip's json carries under "motion" (curation/motion.py; clips.parquet columns)
MOTION_KEYS = (
    "motion_mean",
    "motion_peak",
    "frame_diff_mean",
    "flow_mean",
    "shift_mean",
    "shake_rate",
    "shake_amplitude",
)
# per-shard columns of index.json ("clips": {field: [one value per clip, in shard order]}): what a
# loader needs to size an epoch (buckets, packing) without reading a tar
INDEX_CLIP_FIELDS = ("key", "num_frames", "fps", "height", "width")

# Keys of the per-sample json (values: what they hold). Producers write all of the required ones;
# consumers may rely on them being present.
REQUIRED_META = {
    "key": "the sample key, e.g. '<source_id>_s0003_c01'",
    "source_id": "stable id of the source file (same on every run)",
    "source_path": "path of the source file as given to curation",
    "source_sha256": "content hash of the source file",
    "start_frame": "first source frame of the clip (inclusive)",
    "end_frame": "last source frame of the clip (exclusive)",
    "start_seconds": "presentation time of start_frame in the source (seconds from its first frame)",
    "end_seconds": "presentation time at which the clip ends in the source",
    "fps": "frame rate of the clip's mp4 (float; frames / duration when timing.variable_fps)",
    "num_frames": "exact number of frames in the clip's mp4",
    "width": "width of the clip's mp4 in pixels",
    "height": "height of the clip's mp4 in pixels",
    "split": "'train' or 'val'",
    "pipeline_version": "PIPELINE_VERSION of the writer",
}
OPTIONAL_META = {
    "motion": "dict of motion scores (mean, peak, ... relative to the frame diagonal)",
    "clip_score": "CLIP image-text similarity of the chosen caption",
    "caption": "the chosen caption (same as key.txt)",
    "caption_origin": "'source' | 'coca' | 'retrieval'",
    "caption_candidates": "list of {text, origin, score}",
    "timing": "{mode: 'source' (true frame times) | 'cfr' (resampled to extract.fps), variable_fps, duration}",
    "label": "integer class label, when the dataset has one",
}

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_key(key: str) -> str:
    """Return `key` if it is a valid sample key; raise naming the problem otherwise.

    webdataset splits a member name at its first dot, so a dot inside a key silently breaks
    sample grouping; a slash makes a directory inside the tar.
    """
    if not _KEY_RE.match(key):
        raise ValueError(
            f"invalid shard sample key {key!r}: use only letters, digits, '_' and '-' "
            "(a dot would split the key, a slash would make a directory)"
        )
    return key


def missing_meta(meta: dict) -> list[str]:
    """Names of REQUIRED_META keys absent from a sample's json (empty when valid)."""
    return [k for k in REQUIRED_META if k not in meta]
