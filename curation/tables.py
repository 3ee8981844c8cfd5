"""The two tables every run writes: OUT/sources.parquet (one row per input file) and
OUT/clips.parquet (one row per candidate clip): their columns and arrow types, in one place."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.schema import MOTION_KEYS
from curation.workdir import write_atomic

SOURCE_COLUMNS = [
    "source_id",
    "path",
    "status",
    "reason",
    "duration",
    "fps",
    "variable_fps",
    "num_frames",
    "width",
    "height",
    "rotation",
    "codec",
    "num_scenes",
    "num_clips",
    "num_kept",
    "seconds_kept",
    "split",
    "elapsed_s",
]
CLIP_COLUMNS = [
    "key",
    "source_id",
    "scene_index",
    "clip_index",
    "start_frame",
    "end_frame",
    "start_seconds",
    "end_seconds",
    "num_frames",
    "duration",
    "fps",
    "width",
    "height",
    "timing",
    "variable_fps",
    "boundary_start",
    "boundary_end",
    "trim_start",
    "trim_end",
    *MOTION_KEYS,
    "kept",
    "stage",
    "reason",
    "clip_score",
    "caption",
    "caption_origin",
    "duplicate_of",
    "split",
    "shard",
    "thumb",
]


def write_tables(out: Path, records: list[dict], clips: list[dict]) -> tuple[pa.Table, pa.Table]:
    sources_tbl, clips_tbl = tables(records, clips)
    write_atomic(out / "sources.parquet", _parquet_bytes(sources_tbl))
    write_atomic(out / "clips.parquet", _parquet_bytes(clips_tbl))
    return sources_tbl, clips_tbl


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def tables(records: list[dict], clips: list[dict]) -> tuple[pa.Table, pa.Table]:
    rows = []
    for r in records:
        p = r.get("probe") or {}
        kept = [c for c in r["clips"] if c["kept"]]
        rows.append(
            {
                "source_id": r["source_id"],
                "path": r["path"],
                "status": r["status"],
                "reason": r["reason"],
                "duration": p.get("duration"),
                "fps": p.get("fps"),
                "variable_fps": p.get("variable_fps"),
                "num_frames": p.get("num_frames"),
                "width": p.get("width"),
                "height": p.get("height"),
                "rotation": p.get("rotation"),
                "codec": p.get("codec"),
                "num_scenes": r["num_scenes"],
                "num_clips": len(r["clips"]),
                "num_kept": len(kept),
                "seconds_kept": float(sum(c["duration"] for c in kept)),
                "split": r.get("split"),
                "elapsed_s": r.get("elapsed_s"),
            }
        )
    schema_s = pa.schema(
        [
            ("source_id", pa.string()),
            ("path", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("duration", pa.float64()),
            ("fps", pa.float64()),
            ("variable_fps", pa.bool_()),
            ("num_frames", pa.int64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("rotation", pa.int64()),
            ("codec", pa.string()),
            ("num_scenes", pa.int64()),
            ("num_clips", pa.int64()),
            ("num_kept", pa.int64()),
            ("seconds_kept", pa.float64()),
            ("split", pa.string()),
            ("elapsed_s", pa.float64()),
        ]
    )
    f64 = pa.float64()
    types = {
        "key": pa.string(),
        "source_id": pa.string(),
        "scene_index": pa.int64(),
        "clip_index": pa.int64(),
        "start_frame": pa.int64(),
        "end_frame": pa.int64(),
        "start_seconds": f64,
        "end_seconds": f64,
        "num_frames": pa.int64(),
        "duration": f64,
        "fps": f64,
        "width": pa.int64(),
        "height": pa.int64(),
        "motion_mean": f64,
        "motion_peak": f64,
        "frame_diff_mean": f64,
        "flow_mean": f64,
        "shift_mean": f64,
        "timing": pa.string(),  # source (true frame times) | cfr (resampled to extract.fps)
        "variable_fps": pa.bool_(),
        "boundary_start": pa.string(),  # source | cut | transition | split
        "boundary_end": pa.string(),
        "trim_start": pa.int64(),  # frames trimmed at that boundary (a transition's frames included)
        "trim_end": pa.int64(),
        "shake_rate": f64,  # direction reversals of the camera's global shift per second
        "shake_amplitude": f64,
        "kept": pa.bool_(),
        "stage": pa.string(),
        "reason": pa.string(),
        "clip_score": f64,
        "caption": pa.string(),
        "caption_origin": pa.string(),
        "duplicate_of": pa.string(),
        "split": pa.string(),
        "shard": pa.string(),
        "thumb": pa.string(),
    }
    schema_c = pa.schema([(k, types[k]) for k in CLIP_COLUMNS])

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    crow = [{k: clean(c.get(k)) for k in CLIP_COLUMNS} for c in clips]
    return pa.Table.from_pylist(rows, schema=schema_s), pa.Table.from_pylist(crow, schema=schema_c)
