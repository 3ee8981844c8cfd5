"""Find the input files and give each a stable `source_id`.

`raw` is a directory (searched recursively), a glob, a `.txt` list (one path per line, `#`
comments) or a `.csv` list (header with a `path` column and an optional `caption` column).
Relative paths in a list are relative to the list file.

`source_id` = a readable slug of the file name + the first 12 hex digits of the file's sha256:
the same bytes give the same id on every run, wherever the file lives, and the id is a valid
shard-key prefix (letters, digits, '_' and '-').
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# Files found in a RAW directory that are not videos still get a row (status `skipped`) with a reason.
_KINDS = {
    "audio-only file": (".m4a", ".mp3", ".wav", ".aac", ".flac", ".ogg", ".opus", ".wma"),
    "image": (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic"),
    "text/metadata file": (".txt", ".md", ".csv", ".json", ".yaml", ".yml", ".xml", ".srt", ".vtt"),
}


def skip_reason(path: str) -> str:
    """Why a file is not processed as a video ("" for a video extension)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return ""
    if ext == ".json":
        for v in VIDEO_EXTENSIONS:
            for cand in (p.with_suffix(v), p.with_suffix(v.upper())):
                if cand.is_file():
                    return f"caption sidecar of {cand.name}"
    for kind, exts in _KINDS.items():
        if ext in exts:
            return f"not a video: {kind} ({ext})"
    return f"not a video: unknown extension {ext or '(none)'}"


@dataclass(frozen=True)
class Source:
    path: str  # as found (absolute)
    source_id: str
    sha256: str  # "" when the file could not be read
    caption: str | None = None  # from a csv list's caption column
    error: str = ""  # set when the file could not even be read for hashing
    skipped: str = ""  # set for a non-video file found in a RAW directory: why it is skipped


def _slug(name: str, limit: int = 40) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-")
    return (slug or "video")[:limit]


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _in_dir(root: Path, exclude: str | None) -> list[Path]:
    """Every file under `root` except hidden ones (any hidden path part) and those under `exclude`."""
    ex = Path(exclude).absolute() if exclude else None
    files = []
    for f in root.rglob("*"):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if ex is not None and (f.absolute() == ex or ex in f.absolute().parents):
            continue
        files.append(f)
    return files


def list_inputs(raw: str, exclude: str | None = None) -> list[tuple[str, str | None]]:
    """(absolute path, caption or None) for every input named by `raw`, sorted by path.

    A directory yields every file in it (videos and non-videos alike, so each gets a row), except
    hidden files and anything under `exclude` (OUT, when it sits inside RAW).
    """
    p = Path(raw)
    items: list[tuple[str, str | None]] = []
    if p.is_dir():
        items = [(str(f), None) for f in _in_dir(p, exclude)]
    elif p.is_file() and p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(
                    f"{raw}: a csv list needs a header with a `path` column (and optional `caption`)"
                )
            for row in reader:
                path = Path(row["path"])
                path = path if path.is_absolute() else p.parent / path
                items.append((str(path), (row.get("caption") or "").strip() or None))
    elif p.is_file() and p.suffix.lower() == ".txt":
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line)
                items.append((str(path if path.is_absolute() else p.parent / path), None))
    elif p.is_file():
        items = [(str(p), None)]
    else:
        items = [(f, None) for f in glob.glob(raw, recursive=True) if Path(f).is_file()]
        if not items:
            raise FileNotFoundError(
                f"raw={raw!r} is not a directory, list file (.txt/.csv), video file or matching glob"
            )
    items = [(str(Path(path).absolute()), cap) for path, cap in items]
    return sorted(dict(items).items())  # one entry per path, deterministic order


def hash_chunk(paths: list[str]) -> list[tuple]:
    """(path, size, mtime_ns, sha256, error) per path; runs in a worker, next to the bytes."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_size, st.st_mtime_ns, file_sha256(path), ""))
        except OSError as e:
            out.append((path, None, None, "", f"unreadable: {e}"))
    return out


def _serial(fn, tasks):
    return (fn(t) for t in tasks)


def _chunks(paths: list[str], sizes: list[int], n: int, max_bytes: int = 4 << 30) -> list[list[str]]:
    """About `n` chunks of consecutive paths (per-task overhead stays small for tiny files), none
    over `max_bytes` unless one file is (a chunk must hash well within source_timeout_s)."""
    per = max(1, -(-len(paths) // max(1, n)))
    chunks, cur, cur_bytes = [], [], 0
    for path, size in zip(paths, sizes):
        if cur and (len(cur) >= per or cur_bytes + size > max_bytes):
            chunks.append(cur)
            cur, cur_bytes = [], 0
        cur.append(path)
        cur_bytes += size
    return chunks + ([cur] if cur else [])


def hash_files(paths: list[str], *, run_tasks=None, chunks: int = 1, cache: Path | None = None) -> dict:
    """{path: (sha256, error)} for `paths`. Files unchanged since `cache` was written (same size
    and mtime) are not read again; the rest are hashed by `run_tasks(hash_chunk, chunks)` (an
    executor: the workers read the bytes, not the driver) and the cache is rewritten."""
    import json

    known = {}
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    result, todo, sizes = {}, [], []
    for path in paths:
        hit = known.get(path)
        try:
            st = os.stat(path)
        except OSError as e:
            result[path] = ("", f"unreadable: {e}")
            continue
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            result[path] = (hit[2], "")
        else:
            todo.append(path)
            sizes.append(st.st_size)
    for rows in (run_tasks or _serial)(hash_chunk, _chunks(todo, sizes, chunks)):
        for path, size, mtime_ns, sha, err in rows:
            result[path] = (sha, err)
            if not err:
                known[path] = [size, mtime_ns, sha]
    if cache is not None and todo:
        from curation.workdir import write_atomic

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(known))
    return result


def _path_id(path: str) -> str:
    return f"{_slug(Path(path).stem)}-p{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def discover(
    raw: str,
    progress: bool = False,
    exclude: str | None = None,
    *,
    limit: int = 0,
    run_tasks=None,
    chunks: int = 1,
    cache: Path | None = None,
) -> list[Source]:
    """Every input as a Source, sorted by source_id. Unreadable files keep an error, never vanish;
    non-video files keep a `skipped` reason (and are not hashed: their id comes from the path).
    `limit` > 0 hashes only the first `limit` videos (by path); the others are skipped for now.
    Hashing goes through `run_tasks` (see hash_files), serially in this process by default."""
    inputs = list_inputs(raw, exclude)
    single = Path(raw).is_file() and Path(raw).suffix.lower() not in (".txt", ".csv")  # probe decides
    why = {path: "" if single else skip_reason(path) for path, _ in inputs}
    videos = [path for path, _ in inputs if not why[path]]
    if limit and len(videos) > limit:
        for path in videos[limit:]:
            why[path] = f"not processed: limit={limit} (a trial run; rerun without limit for the rest)"
        videos = videos[:limit]
    if progress:
        print(f"discover: {len(inputs)} file(s), hashing {len(videos)} video(s)", flush=True)
    hashes = hash_files(videos, run_tasks=run_tasks, chunks=chunks, cache=cache)
    sources = []
    for path, caption in inputs:
        if why[path]:
            sources.append(Source(path, _path_id(path), "", caption, skipped=why[path]))
            continue
        sha, err = hashes[path]
        if err:
            sources.append(Source(path, _path_id(path), "", caption, error=err))
        else:
            sources.append(Source(path, f"{_slug(Path(path).stem)}-{sha[:12]}", sha, caption))
    return sorted(sources, key=lambda s: (s.source_id, s.path))
