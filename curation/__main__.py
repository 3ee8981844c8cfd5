"""`python -m curation [config.yaml] raw=<dir|glob|list> out=<dir> [key=value ...]`

Turns raw footage into WebDataset shards, sources/clips tables and a report (see
curation/pipeline.py). `--help` lists every key with its default and meaning.
"""

from __future__ import annotations

import logging
import sys

USAGE = """usage: python -m curation [CONFIG.yaml] raw=<dir|glob|list.txt|list.csv> out=<dir> [key=value ...]

Curate raw footage into WebDataset shards (OUT/shards/), OUT/sources.parquet, OUT/clips.parquet
and OUT/report.{json,html}. Reruns with the same out= resume where a previous run stopped.
Exit status: 0 (failures are listed), 1 when no source succeeded or, with strict=true, when any
source failed; 2 for a bad command line or config.

keys (key = default):
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from curation.config import help_text, load_config

    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + help_text())
        return 0
    config_file = argv.pop(0) if argv and "=" not in argv[0] else None
    try:
        cfg = load_config(config_file, argv)
    except Exception as e:  # noqa: BLE001 - any config problem is a usage error with its message
        print(
            f"curation: config error: {e}\n(run `python -m curation --help` for every key)", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from curation.pipeline import ConfigChanged, run

    usage_errors: tuple = (ConfigChanged, FileNotFoundError)
    if cfg.caption.enabled:  # torch is imported only when captions are made
        from curation.captions import CaptionWeightsError

        usage_errors += (CaptionWeightsError,)
    try:
        rep = run(cfg)
    except usage_errors as e:
        print(f"curation: {e}", file=sys.stderr)
        return 2
    failures = rep.get("failures", [])
    print(f"curation: {rep.get('num_ok', 0)} source(s) ok, {len(failures)} failed; outputs in {cfg.out}")
    for path, status, reason in failures:
        print(f"  {status}: {path}: {reason}")
    skipped = rep.get("skipped", [])
    if skipped:
        print(f"curation: {len(skipped)} file(s) in raw skipped (not videos; see sources.parquet)")
    if rep.get("num_ok", 0) == 0:
        print("curation: no source succeeded", file=sys.stderr)
        return 1
    if cfg.strict and failures:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
