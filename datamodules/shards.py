"""Shard lists and raw sample streams (webdataset tar parsing; no decoding here).

Shard specs accepted by `expand_shards` (a string or a list of them; "::" also separates):
- local paths, with brace patterns ``data/train-{000000..000099}.tar`` and globs ``data/*.tar``;
- a directory (all its ``*.tar``) or a ``.txt`` file with one spec per line;
- ``pipe:`` commands (``pipe:aws s3 cp s3://b/train-000001.tar -``) and http(s) URLs, opened by
  webdataset's `gopen`;
- any other fsspec URL (``s3://``, ``gs://``, ``memory://`` ...), opened with `fsspec.open`;
  globs in them are expanded with the filesystem's glob.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlparse

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

log = logging.getLogger(__name__)

_GOPEN_SCHEMES = {"", "file", "pipe", "http", "https", "sftp", "ftps", "scp"}
_GLOB = set("*?[")


def _scheme(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    s = urlparse(url).scheme
    return "" if len(s) == 1 else s  # "C:\..." is a path


def expand_shards(spec: str | list[str] | None) -> list[str]:
    """A flat list of shard URLs from paths, globs, brace patterns, directories, lists and URLs."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(str(item)):
            url = url.strip()
            scheme = _scheme(url)
            if not url:
                continue
            if scheme in ("", "file"):
                path = urlparse(url).path if scheme == "file" else url
                if _GLOB & set(path):
                    out += sorted(glob.glob(path))
                elif os.path.isdir(path):
                    out += sorted(glob.glob(os.path.join(path, "*.tar")))
                elif path.endswith(".txt") and os.path.isfile(path):
                    lines = [ln.strip() for ln in open(path) if ln.strip() and not ln.startswith("#")]
                    out += expand_shards(lines)
                else:
                    out.append(url)
            elif scheme not in _GOPEN_SCHEMES and _GLOB & set(url):
                import fsspec

                fs, _, paths = fsspec.get_fs_token_paths(url)
                out += sorted(fs.unstrip_protocol(p) for p in paths)
            else:
                out.append(url)
    return out


def open_url(url: str):
    """A readable binary stream for a shard URL (gopen for paths, pipe: and http; fsspec otherwise)."""
    if _scheme(url) in _GOPEN_SCHEMES:
        return wds.gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def raw_samples(urls: Iterable[str], *, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """Samples (dicts of field -> bytes, plus __key__ and __url__) from the shards in order.

    A shard that cannot be opened or read is reported to `handler` and the stream moves on.
    """

    def opened():
        for url in urls:
            try:
                yield {"url": url, "stream": open_url(url)}
            except Exception as exn:  # noqa: BLE001 - reported, never silent
                exn.args = (*exn.args, url)
                if not handler(exn):
                    return

    return group_by_keys(tar_file_expander(opened(), handler=handler), handler=handler)


def scan_metadata(url: str) -> list[dict]:
    """Per-sample facts without reading any video: the sample json (or {}) plus `__key__` and
    `__fields__`. Local tars are read by seeking past the mp4 payloads; other URLs are streamed."""
    by_key: dict[str, dict] = {}

    def add(name: str, read: Callable[[], bytes]):
        if "/" in name or "." not in name:
            return
        key, field = name.split(".", 1)
        entry = by_key.setdefault(key, {"__key__": key, "__fields__": []})
        entry["__fields__"].append(field.lower())
        if field.lower() == "json":
            try:
                entry.update(json.loads(read()))
            except Exception:  # noqa: BLE001 - a bad json is the decoder's to count
                pass

    scheme = _scheme(url)
    try:
        if scheme in ("", "file") and os.path.isfile(urlparse(url).path if scheme == "file" else url):
            with tarfile.open(urlparse(url).path if scheme == "file" else url, "r:") as tar:
                for m in tar:
                    if m.isreg():
                        add(m.name, lambda m=m: tar.extractfile(m).read())
        else:
            with open_url(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for m in tar:
                    if m.isreg():
                        data = tar.extractfile(m).read()
                        add(m.name, lambda data=data: data)
    except (tarfile.TarError, OSError, EOFError) as exn:  # a cut shard: keep what was read
        log.warning("shard %s is unreadable after %d samples (%r)", url, len(by_key), exn)
    return list(by_key.values())
