"""The curation config: one structured OmegaConf schema, every default stated here once.

    python -m curation [config.yaml] raw=<dir|glob|list.txt|list.csv> out=<dir> [key=value ...]

Each field's `help` is what `python -m curation --help` prints. YAML files under
`configs/curate/` hold only the values that differ from these defaults. Only the standard library
and OmegaConf are imported here: spawned workers and `--help` must not pay for torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with a default and the help line `--help` prints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ProbeConfig:
    min_seconds: float = _f(1.0, "reject sources shorter than this (seconds)")
    min_short_side: int = _f(64, "reject sources whose short side is below this (pixels)")
    max_pixels: int = _f(4096 * 4096, "reject sources with more pixels per frame than this")


@dataclass
class AnalysisConfig:
    detectors: list = _f(
        ["content", "threshold"],
        "PySceneDetect detectors run on every frame: any of content, adaptive, hash, histogram, "
        "threshold (fades to black); their cuts are united",
    )
    content: dict = _f(
        {},
        "ContentDetector kwargs, e.g. {threshold: 27, min_scene_len: 15}; scenedetect's threshold 27 is "
        "kept: it finds real hard cuts exactly, while 18 and below add false cuts inside real moving shots "
        "(tests/test_real_footage.py corpus); dissolves and fades are found by clips.transition_*, not by it",
    )
    adaptive: dict = _f({}, "AdaptiveDetector kwargs, e.g. {adaptive_threshold: 3.0, window_width: 2}")
    hash: dict = _f({}, "HashDetector kwargs, e.g. {threshold: 0.395, size: 16}")
    histogram: dict = _f({}, "HistogramDetector kwargs, e.g. {threshold: 0.05, bins: 256}")
    threshold: dict = _f({}, "ThresholdDetector kwargs, e.g. {threshold: 12, fade_bias: 0}")
    min_width: int = _f(
        256,
        "detector frame size, scenedetect's auto_downscale rule: frames whose larger side is >= "
        "min_width are downscaled by max(width, height) / min_width (0 = full size)",
    )
    scaler: str = _f(
        "ffmpeg",
        "how frames reach detector size: ffmpeg (FFmpeg area-scales in 4:2:0, OpenCV converts the "
        "small frame: fast; a cut may move by a frame vs scenedetect.detect()) or scenedetect "
        "(full-size BGR then cv2 INTER_LINEAR: cut lists identical to scenedetect.detect())",
    )
    flow_fps: float = _f(
        2.0, "motion samples per second, each on a consecutive frame pair (video2dataset: 2)"
    )
    flow_short_side: int = _f(
        64,
        "about the short side of the grayscale frames for flow and frame diffs (detector frames "
        "reduced by the nearest integer factor)",
    )
    keep_fps: float = _f(2.0, "rate at which frames are kept for CLIP, thumbnails and phash")
    keep_short_side: int = _f(224, "short side of the kept frames (pixels)")
    threads: int = _f(1, "PyAV decoder threads per source (0 = FFmpeg's choice)")


@dataclass
class ClipsConfig:
    min_seconds: float = _f(2.0, "drop scenes (and chunks) shorter than this")
    max_seconds: float = _f(10.0, "split scenes longer than this into equal chunks no longer than this")
    cut_trim_frames: int = _f(
        0,
        "frames dropped at each side of a hard cut (0: a detected cut is exact, and trimming is only "
        "for gradual transitions, which are found from evidence, see curation/scenes.py)",
    )
    transition_linearity: float = _f(
        0.25,
        "gradual transitions: a frame is part of a fade or dissolve when it is the mean of the frames 3 "
        "before and 3 after it, within this fraction of their difference (a cut or motion gives ~0.5)",
    )
    transition_min_change: float = _f(
        6.0, "...and those two frames differ by more than this (mean |gray difference|, 0-255)"
    )
    transition_min_frames: int = _f(3, "...for at least this many frames in a row")
    transition_contrast: float = _f(
        1.5,
        "...and the picture changes across the transition this many times more than over as many frames "
        "just before or after it (smooth motion changes alike), unless frames inside it are black (fade)",
    )
    max_transition_seconds: float = _f(
        2.0, "longest gradual transition: a longer linear stretch is smooth motion, not a transition"
    )
    dark_level: float = _f(12.0, "frames whose mean luma is below this count as black (fades)")
    thumb_frames: int = _f(4, "frames in each clip's thumbnail strip (thumbs/<key>.jpg)")
    thumb_height: int = _f(64, "height of the thumbnail strip")


@dataclass
class MotionConfig:
    static_mean: float = _f(
        0.01, "reject as static when mean motion is below this (frame diagonals per second)"
    )
    fast_mean: float = _f(0.8, "reject as too fast when mean motion exceeds this (diagonals per second)")
    shaky_reversals: float = _f(
        4.0,
        "reject as shaky when the camera's global shift reverses direction at least this often per "
        "second (oscillation; a pan, however fast, has none)...",
    )
    shaky_amplitude: float = _f(0.1, "...with reversing shifts at least this fast (diagonals per second)")


@dataclass
class ExtractConfig:
    codec: str = _f("libx264", "encoder (libx264 is GPL; any PyAV video encoder name works)")
    crf: int = _f(22, "x264 constant rate factor")
    preset: str = _f("veryfast", "x264 preset")
    max_short_side: int = _f(0, "downscale clips whose short side exceeds this (0 = keep size)")
    fps: float = _f(0.0, "resample clips to this constant frame rate (0 = keep the source rate)")
    threads: int = _f(1, "encoder threads per clip")
    reuse_decoded_mb: int = _f(
        -1,
        "MiB of decoded frames per worker the analysis pass keeps for extraction, so kept clips are "
        "not decoded again (a 720p 4:2:0 frame is 1.3 MiB, 1080p 3.0); -1 = auto (1024, or a quarter "
        "of the machine's memory per CPU when that is less), 0 = decode them again",
    )
    seek_gap_seconds: float = _f(
        2.0,
        "seek (instead of decoding through) gaps between kept clips longer than this, for records "
        "without the source's key frames; with them, extraction seeks to any key frame inside a gap",
    )
    x264_params: str = _f(
        "mbtree=0",
        "extra x264/x265 params (':'-separated); x264's macroblock-tree rate control gave byte-different "
        "clips run to run, which breaks 'a resumed run equals an uninterrupted one', so it is off",
    )


@dataclass
class CaptionConfig:
    """CLIP recaptioning options (``caption.*`` on the curation command line)."""

    enabled: bool = _f(True, "CLIP captions and embeddings; false = keep source captions, phash dedup")
    model: str = _f(
        "ViT-B-32",
        "open_clip architecture name, or path/to/model_config.json, or hf-hub:org/repo, or local-dir:/path",
    )
    pretrained: str = _f(
        "laion2b_s34b_b79k",
        "open_clip pretrained tag of `model` (downloaded into the usual cache when online) or a local checkpoint file",
    )
    frames_per_clip: int = _f(4, "frames per clip embedded (evenly spaced; mean of their embeddings)")
    batch_size: int = _f(64, "images per forward pass of the image tower (and texts per text pass)")
    device: str = _f("auto", "auto (cuda when available, else cpu) or a torch device string")
    vocabulary: str | None = _f(None, "retrieval vocabulary yaml (null = curation/vocabulary.yaml)")
    retrieval_top_k: int = _f(2, "phrases kept per vocabulary list (subjects, actions, scenes) per clip")
    coca: bool = _f(True, "add a generated caption when `model` is a CoCa model (needs transformers<5)")
    coca_seq_len: int = _f(30, "most tokens of a generated CoCa caption")
    static_below: float = _f(
        0.03, "motion_mean below this adds the 'static' motion phrase (frame diagonals per second)"
    )
    fast_above: float = _f(0.3, "motion_mean above this adds the 'fast' motion phrase (diagonals per second)")
    prefer_source_margin: float = _f(
        0.0,
        "keep the source's own caption unless another candidate's CLIP score beats it by more than this "
        "(cosine; retrieval sentences are built from the clip's own embedding and so score high; 0 = the "
        "best score wins, ties to the source)",
    )
    cache_dir: str | None = _f(None, "download cache of open_clip / Hugging Face (null = their default)")


@dataclass
class DedupConfig:
    """Near-duplicate removal options (``dedup.*`` on the curation command line)."""

    enabled: bool = _f(True, "drop near-duplicate kept clips")
    method: str = _f(
        "auto", "auto (CLIP embeddings when every clip has one, else phash), embedding, or phash"
    )
    cosine_threshold: float = _f(0.98, "duplicates when CLIP embedding cosine >= this (Open-Sora uses 0.98)")
    hamming_threshold: int = _f(
        4, "duplicates when 64-bit perceptual-hash Hamming distance <= this (captioning off)"
    )


@dataclass
class ShardsConfig:
    maxcount: int = _f(1000, "most samples per shard")
    maxsize: float = _f(1e9, "most bytes per shard")


@dataclass
class RayConfig:
    address: str = _f(
        "",
        "Ray cluster to join ('auto' inside a cluster job, or ray://host:10001); '' = start a local "
        "Ray instance. Every node must see raw and out at the same paths (a shared filesystem)",
    )
    num_cpus: int = _f(0, "CPUs for a local Ray instance (0 = workers, or all cores)")


@dataclass
class CurateConfig:
    raw: str = _f(
        MISSING, "input: a directory (recursive), a glob, a .txt list or a .csv list (path[,caption])"
    )
    out: str = _f(MISSING, "output directory (created; reruns resume from it)")
    executor: str = _f("local", "local (process pool) or ray (a pool of Ray actors)")
    workers: int = _f(
        0,
        "parallel source workers (0 = all cores; with Ray, one per CPU of the cluster); 1 runs in this process",
    )
    source_timeout_s: float = _f(
        3600.0,
        "a source still running after this many seconds (a hung decoder) is stopped: its worker is "
        "killed, its row says `error: timeout ...` and the run goes on (0 = no limit; workers=1 "
        "runs in this process, where nothing can be stopped)",
    )
    retries: int = _f(1, "times a source is retried on a fresh worker when its worker dies (OOM kill, crash)")
    retry_errors: bool = _f(
        False, "reprocess sources whose sealed record says error (timeouts, crashes) instead of keeping it"
    )
    limit: int = _f(
        0,
        "trial run: process only the first N video files (by path); the others are listed as "
        "skipped and a later run without limit processes them (0 = all)",
    )
    strict: bool = _f(False, "exit non-zero when any source failed")
    on_config_change: str = _f(
        "error",
        "when OUT holds records made with different analysis or extract settings: error (stop and "
        "say so) or redo (reprocess those sources). Motion thresholds never need it: a change refilters "
        "the stored scores (and encodes only clips that newly pass) without decoding for analysis",
    )
    val_fraction: float = _f(0.1, "held-out fraction of sources (deterministic by source_id hash)")
    progress: bool = _f(True, "show progress bars")
    probe: ProbeConfig = _sub(ProbeConfig, "source probing and rejection")
    analysis: AnalysisConfig = _sub(AnalysisConfig, "the single decode pass per source")
    clips: ClipsConfig = _sub(ClipsConfig, "scenes to candidate clips")
    motion: MotionConfig = _sub(MotionConfig, "motion filter thresholds")
    extract: ExtractConfig = _sub(ExtractConfig, "clip encoding")
    caption: CaptionConfig = _sub(CaptionConfig, "CLIP recaptioning (curation/captions.py)")
    dedup: DedupConfig = _sub(DedupConfig, "near-duplicate removal (curation/dedup.py)")
    shards: ShardsConfig = _sub(ShardsConfig, "webdataset shard limits")
    ray: RayConfig = _sub(RayConfig, "Ray executor")


# Keys that do not change outputs; everything else feeds the config hash.
RUNTIME_KEYS = (
    "raw",
    "out",
    "executor",
    "workers",
    "source_timeout_s",
    "retries",
    "retry_errors",
    "limit",
    "strict",
    "on_config_change",
    "progress",
    "ray",
)
# Settings that change only how fast outputs are made, never the outputs (decoder threads give
# the same frames; seeking over a gap gives the same frames as decoding through it, and frames
# kept from the analysis pass are the frames a second decode gives).
SPEED_KEYS = {"analysis": ("threads",), "extract": ("seek_gap_seconds", "reuse_decoded_mb")}


def load_config(path: str | None = None, overrides: list[str] | None = None) -> CurateConfig:
    """Merge schema defaults, an optional YAML file and `key=value` overrides; validate types."""
    cfg = OmegaConf.structured(CurateConfig)
    if path:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    for key in ("raw", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise ValueError(f"missing required key `{key}`: pass {key}=<path> on the command line")
    if cfg.executor not in ("local", "ray"):
        raise ValueError(f"executor={cfg.executor!r}: use executor=local or executor=ray")
    if cfg.on_config_change not in ("error", "redo"):
        raise ValueError(f"on_config_change={cfg.on_config_change!r}: use error or redo")
    if cfg.limit < 0 or cfg.retries < 0 or cfg.source_timeout_s < 0:
        raise ValueError("limit, retries and source_timeout_s must be >= 0")
    if not 0.0 <= cfg.val_fraction <= 1.0:
        raise ValueError(f"val_fraction={cfg.val_fraction} must lie in [0, 1]")
    return OmegaConf.to_object(cfg)


def to_dict(cfg: CurateConfig) -> dict:
    """The config as plain nested dicts. dataclasses.asdict gives what OmegaConf's structured
    round trip gives for a loaded config (plain values) at 1 % of its cost (~10 ms, paid for
    every hash); anything else (OmegaConf containers, interpolations) takes the OmegaConf path."""
    d = dataclasses.asdict(cfg)
    if _plain(d):
        return d
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or (isinstance(x, (str, int, float, bool)) and not (isinstance(x, str) and "${" in x))


# What the per-source stage reads, in two parts. Analysis (probe, the decode pass, candidate clips
# and their scores, thumbnails, kept frames) is stamped with `analysis_hash`; the motion filter and
# extraction with `source_hash`. A motion threshold change refilters the stored scores; only an
# analysis change needs a decode pass again. Dedup, split, shards and the report are rebuilt from
# the records on every run, so changing them reprocesses nothing.
ANALYSIS_KEYS = ("probe", "analysis", "clips")
FILTER_KEYS = ("motion", "extract")
# Caption settings that do not change captions (where and how fast they are computed).
CAPTION_RUNTIME_KEYS = ("device", "batch_size", "cache_dir")


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _outputs(cfg: CurateConfig) -> dict:
    """The config without runtime and speed-only keys: what outputs depend on."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}
    for section, keys in SPEED_KEYS.items():
        d[section] = {k: v for k, v in d[section].items() if k not in keys}
    return d


def config_hash(cfg: CurateConfig) -> str:
    """Hash of every setting that changes outputs (runtime and speed-only keys excluded)."""
    return _hash(_outputs(cfg))


def analysis_hash(cfg: CurateConfig) -> str:
    """Hash of what a source's analysis (candidates, scores, kept frames) depends on."""
    d = _outputs(cfg)
    stage = {k: d[k] for k in ANALYSIS_KEYS}
    stage["kept_frames"] = {  # the frames kept for captioning and dedup are part of the record
        # (kept whether captioning is on or not: caption.enabled is no part of the analysis)
        "frames_per_clip": d["caption"]["frames_per_clip"],
        "dedup": d["dedup"]["enabled"],
    }
    return _hash(stage)


def extract_hash(cfg: CurateConfig) -> str:
    """Hash of the encoder settings: clips encoded under it can be reused."""
    return _hash(_outputs(cfg)["extract"])


def source_hash(cfg: CurateConfig) -> str:
    """Hash of everything a source's completion record depends on: analysis, filter, extraction."""
    d = _outputs(cfg)
    return _hash({"analysis": analysis_hash(cfg), **{k: d[k] for k in FILTER_KEYS}})


def caption_hash(cfg: CurateConfig) -> str:
    """Hash of what a source's captions depend on: its record and the caption settings."""
    cap = {k: v for k, v in to_dict(cfg)["caption"].items() if k not in CAPTION_RUNTIME_KEYS}
    return _hash({"source": source_hash(cfg), "caption": cap})


def help_text() -> str:
    """Every key with its default and meaning, for `--help`."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None) or (
                f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
            ):
                lines.append(f"\n{key}.*  ({f.metadata.get('help', '')})")
                walk(f.default_factory, key + ".")
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            default = "(required)" if default == MISSING else json.dumps(default)
            lines.append(f"  {key} = {default}\n      {f.metadata.get('help', '')}")

    walk(CurateConfig, "")
    return "\n".join(lines)
