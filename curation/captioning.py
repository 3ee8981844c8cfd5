"""Stage 2, captions: one CLIP model, batched over the kept clips of every source, results in
OUT/work/<id>/captions.json (+ emb.npz); then, for finalize, reading them back onto the clip rows.
The captioner itself is curation/captions.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation.config import CurateConfig
from curation.workdir import load_caption_frames, work_dir, write_atomic


def caption_sources(records: list[dict], cfg: CurateConfig, out: Path, chash: str, progress: bool) -> None:
    """Caption the kept clips of every record lacking OUT/work/<id>/captions.json (one model)."""
    todo = []
    for rec in records:
        cap_path = work_dir(out, rec["source_id"]) / "captions.json"
        kept = [c for c in rec["clips"] if c["kept"]]
        if not kept:
            continue
        if cap_path.exists():
            done = json.loads(cap_path.read_text())
            same_inputs = done.get("caption_inputs", rec.get("caption_inputs")) == rec.get("caption_inputs")
            if done.get("config_hash") == chash and same_inputs and not done.get("failed"):
                continue  # captioned before (a failed attempt, or an edited source caption, is redone)
        todo.append((rec, kept))
    if not todo:
        return
    from curation.captions import Captioner

    captioner = Captioner(cfg.caption)
    bar = tqdm(total=sum(len(k) for _, k in todo), desc="captions", unit="clip", disable=not progress)
    per_call = max(1, cfg.caption.batch_size // max(1, cfg.caption.frames_per_clip))
    for rec, kept in todo:
        wd = work_dir(out, rec["source_id"])
        items, results, errors, failed = [], [], {}, False
        for c in kept:
            if not (wd / "frames" / f"{c['key']}.jpg").exists():
                errors[c["key"]] = "no frames kept for captioning (raise analysis.keep_fps)"
                continue
            motion = {k: c[k] for k in ("motion_mean", "motion_peak", "frame_diff_mean")}
            items.append(
                {
                    "key": c["key"],
                    "frames": load_caption_frames(wd, c),
                    "source_caption": c["source_caption"],
                    "motion": motion,
                }
            )
        try:
            for i in range(0, len(items), per_call):
                results += captioner.caption_clips(items[i : i + per_call])
                bar.update(len(items[i : i + per_call]))
        except Exception as e:  # noqa: BLE001 - one source's failure drops its clips, not the run
            bar.write(f"captioning failed: {rec['path']}: {type(e).__name__}: {e}")
            errors.update({it["key"]: f"captioning failed: {type(e).__name__}: {e}" for it in items})
            results, failed = [], True
        bar.update(len(errors))
        np.savez(wd / "emb.tmp.npz", **{r["key"]: np.asarray(r["embedding"], np.float16) for r in results})
        os.replace(wd / "emb.tmp.npz", wd / "emb.npz")
        caps = {
            r["key"]: {k: r[k] for k in ("caption", "caption_origin", "clip_score", "caption_candidates")}
            for r in results
        }
        # the captioner's identity travels with the source's captions, so a resumed run (which may
        # load no model at all) still knows whether the CLIP weights were random
        doc = {
            "config_hash": chash,
            "caption_inputs": rec.get("caption_inputs"),  # the source's own captions it was given
            "clips": caps,
            "errors": errors,
            "failed": failed,
            "info": captioner.info(),
        }
        write_atomic(wd / "captions.json", json.dumps(doc, indent=1, default=float))
    bar.close()


def load_captions(records: list[dict], out: Path) -> tuple[dict, dict, dict, list]:
    """(captions by key, embeddings by key, caption errors by key, captioner infos) of ok records."""
    captions, embeddings, errors, infos = {}, {}, {}, []
    for rec in records:
        wd = work_dir(out, rec["source_id"])
        if rec["status"] != "ok" or not (wd / "captions.json").exists():
            continue
        doc = json.loads((wd / "captions.json").read_text())
        captions.update(doc["clips"])
        errors.update(doc.get("errors", {}))
        infos.append(doc.get("info") or {})
        with np.load(wd / "emb.npz") as z:
            embeddings.update({k: z[k] for k in z.files})
    return captions, embeddings, errors, infos


def apply_captions(clips: list[dict], captions: dict, errors: dict) -> None:
    """Each clip row gets its chosen caption and candidates (CLIP's, or the source's own);
    a kept clip whose captioning failed is dropped at stage `caption`."""
    for c in clips:
        if c["kept"] and c["key"] in errors:
            c.update(kept=False, stage="caption", reason=errors[c["key"]])
        cap = captions.get(c["key"])
        if cap:
            c.update(
                caption=cap["caption"],
                caption_origin=cap["caption_origin"],
                clip_score=cap["clip_score"],
                caption_candidates=cap["caption_candidates"],
            )
        else:
            src_cap = c.get("source_caption")
            c.update(
                caption=src_cap or "",
                caption_origin="source" if src_cap else "",
                clip_score=None,
                caption_candidates=[{"text": src_cap, "origin": "source", "score": None}] if src_cap else [],
            )
