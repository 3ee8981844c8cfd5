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
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass(frozen=True)
class Source:
    path: str  # as found (absolute)
    source_id: str
    sha256: str  # "" when the file could not be read
    caption: str | None = None  # from a csv list's caption column
    error: str = ""  # set when the file could not even be read for hashing


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


def list_inputs(raw: str) -> list[tuple[str, str | None]]:
    """(absolute path, caption or None) for every input named by `raw`, sorted by path."""
    p = Path(raw)
    items: list[tuple[str, str | None]] = []
    if p.is_dir():
        items = [(str(f), None) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS]
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


def discover(raw: str, progress: bool = False) -> list[Source]:
    """Every input as a Source, sorted by source_id. Unreadable files keep an error, never vanish."""
    from tqdm import tqdm

    sources = []
    for path, caption in tqdm(list_inputs(raw), desc="discover (hash)", unit="file", disable=not progress):
        slug = _slug(Path(path).stem)
        try:
            sha = file_sha256(path)
            sources.append(Source(path, f"{slug}-{sha[:12]}", sha, caption))
        except OSError as e:
            pid = hashlib.sha256(path.encode()).hexdigest()[:12]
            sources.append(Source(path, f"{slug}-p{pid}", "", caption, error=f"unreadable: {e}"))
    return sorted(sources, key=lambda s: (s.source_id, s.path))
