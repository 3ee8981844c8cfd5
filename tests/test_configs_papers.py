"""Paper-shaped configs (configs/train/latte_*, vdt_*, opensora_t2v): each instantiates
(`fit --print_config`), its network at full size has the parameter count of the paper's size class
(counted on the meta device, printed), and each runs one training step on CPU with the debug overlay
(configs/train/debug_overlay.yaml stacked last)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from lightning_modules.__main__ import cli_main
from lightning_modules.nets import VideoDiT
from lightning_modules.video_diffusion import DiTConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs/train"
OVERLAY = str(CONFIGS / "debug_overlay.yaml")
# DiT's counts at 32x32 latents, 1000 classes (the size classes); ours drops DiT's 256-row pos_embed
DIT = {"S/2": 32_963_360, "B/2": 130_512_416, "L/2": 458_102_816, "XL/2": 675_129_632}
PAPERS = {  # config -> (size class, relative tolerance around DiT's count)
    "latte_S_2": ("S/2", 0.02),
    "latte_B_2": ("B/2", 0.02),
    "latte_L_2": ("L/2", 0.02),
    "latte_XL_2": ("XL/2", 0.02),
    # VDT blocks hold a temporal and a spatial attention each: DiT's size plus one attention per block
    "vdt_S": ("S/2", 0.45),
    "vdt_L": ("XL/2", 0.45),
    # STDiT-style: two attentions and a caption cross-attention per block
    "opensora_t2v": ("XL/2", 0.7),
}
DATASETS = {"latte_ucf101": 101, "latte_sky": 0, "latte_ffs": 0, "latte_taichi": 0}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def printed_config(capsys, *configs: str) -> dict:
    args = ["fit"] + [a for c in configs for a in ("--config", c)] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def full_size_count(cfg: dict) -> int:
    """Parameters of the config's network at full size (meta device: no memory)."""
    model = cfg["model"]
    flow = model["objective"] == "flow"
    text = model.get("text_encoder")
    text_dim = pooled = 0
    if text:
        arch = open_clip.get_model_config(text["init_args"]["model"])
        text_dim, pooled = arch["text_cfg"]["width"], arch["embed_dim"]
    kwargs = DiTConfig(**model["dit"]).resolve()
    kwargs.update(
        in_channels=4,  # SD VAE latents
        num_classes=model["num_classes"],
        learn_sigma=not flow and bool((model.get("diffusion") or {}).get("learn_sigma")),
        text_dim=text_dim,
        pooled_text_dim=pooled,
    )
    with torch.device("meta"):
        return sum(p.numel() for p in VideoDiT(**kwargs).parameters())


@pytest.mark.parametrize("name", list(PAPERS))
def test_paper_config_instantiates_at_its_size_class(name, capsys):
    cfg = printed_config(capsys, str(CONFIGS / f"{name}.yaml"))
    assert cfg["trainer"]["accelerator"] == "gpu"  # a GPU config; the overlay makes it a CPU run
    count = full_size_count(cfg)
    size, tol = PAPERS[name]
    with capsys.disabled():
        print(f"\n{name}: {count:,} parameters (DiT-{size}: {DIT[size]:,})")
    assert abs(count - DIT[size]) / DIT[size] < tol, (name, count)


def test_latte_sizes_match_dit_up_to_the_positional_table():
    """Latte's variant 1 at DiT's depth is DiT's parameter set (our sin-cos is not a parameter; 101
    classes instead of 1000; a 2-row mask embedding)."""
    for s, n in DIT.items():
        cfg = yaml.safe_load((CONFIGS / f"latte_{s.replace('/', '_')}.yaml").read_text())
        d = DiTConfig(**cfg["model"]["dit"]).resolve()["hidden_size"]
        model = {"model": {**cfg["model"], "num_classes": 101}}
        assert full_size_count(model) == n - 256 * d - 1001 * d + 102 * d + 2 * d


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_latte_dataset_files_stack(dataset, capsys):
    cfg = printed_config(capsys, str(CONFIGS / "latte_XL_2.yaml"), str(CONFIGS / f"{dataset}.yaml"))
    assert cfg["model"]["num_classes"] == DATASETS[dataset]
    assert cfg["model"]["dit"]["preset"] == "XL/2" and cfg["data"]["init_args"]["frame_stride"] == 3
    assert cfg["data"]["init_args"]["num_frames"] == 16 and cfg["data"]["init_args"]["height"] == 256


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random-init tiny open_clip saved as `local-dir:` (the t2v config's text encoder, shrunk)."""
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    (root / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(open_clip.model.CLIP(**cfg).state_dict(), root / "open_clip_pytorch_model.bin")
    return f"local-dir:{root}"


def _one_step(configs: list[str], tmp_path, *extra: str):
    args = ["fit"] + [a for c in configs for a in ("--config", c)] + ["--config", OVERLAY]
    cli = cli_main(args + [f"--trainer.default_root_dir={tmp_path}", *extra])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    return cli


@pytest.mark.parametrize("name", list(PAPERS))
def test_paper_config_runs_one_step_with_the_debug_overlay(name, tmp_path, tiny_clip_dir, capsys):
    extra = []
    if name == "opensora_t2v":  # the tiny CLIP for the text tower, and the packed path of the data
        extra = [f"--model.text_encoder.init_args.model={tiny_clip_dir}", "--data.init_args.mode=packed"]
    cli = _one_step([str(CONFIGS / f"{name}.yaml")], tmp_path, *extra)
    paper = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]["dit"]
    dit = cli.model.dit
    assert (
        dit.block_type == paper["block_type"] and dit.pos_embed == paper["pos_embed"]
    )  # kept by the overlay
    n = sum(p.numel() for p in dit.parameters())
    with capsys.disabled():
        print(f"\n{name} + debug overlay: one step, {n:,} parameters")


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_latte_dataset_runs_one_step_with_the_debug_overlay(dataset, tmp_path):
    cli = _one_step([str(CONFIGS / "latte_S_2.yaml"), str(CONFIGS / f"{dataset}.yaml")], tmp_path)
    assert cli.model.dit.num_classes == DATASETS[dataset]


@pytest.mark.parametrize(
    "flags",
    [
        ["--model.dit.frame_cond=cross_attn"],
        ["--model.dit.frame_cond=adaln"],
        ["--model.dit.cond_injection=in_context"],
        ["--model.dit.block_type=split_heads", "--model.dit.causal=true"],
        ["--model.dit.block_type=late_fusion", "--model.spatial_phase_steps=5"],
        [
            "--model.dit.pos_embed=sincos_framewise",
            "--model.spatial_phase=freeze",
            "--model.spatial_phase_steps=5",
        ],
    ],
    ids=["cross_attn", "adaln_frames", "in_context", "split_causal", "late_fusion_phase", "framewise_freeze"],
)
def test_each_switch_is_one_flag_on_a_paper_config(flags, tmp_path):
    """The comparisons of the papers as one-line changes: VDT-S with each switch trains a step (on
    prediction masks, so the given-frame schemes have given frames to work with)."""
    cli = _one_step([str(CONFIGS / "vdt_S.yaml")], tmp_path, *flags, "--model.mask_probs={predict: 1.0}")
    assert cli.model.masks is not None and cli.model.hparams.mask_probs == {"predict": 1.0}
    for flag in flags:
        key, value = flag.removeprefix("--").split("=")
        section, name = key.split(".")[-2:]
        obj = cli.model.dit if section == "dit" else cli.model.hparams
        got = getattr(obj, name) if section == "dit" else obj[name]
        assert str(got).lower() == value.lower(), flag


@pytest.mark.parametrize("name", ["vdt_S", "vdt_L"])
def test_vdt_configs_say_what_the_skip_phase_needs_on_several_gpus(name):
    """The spatial-only phase (skip) leaves temporal parameters unused: DDP needs the strategy that
    tolerates it, and the config a user starts from says so."""
    text = (CONFIGS / f"{name}.yaml").read_text()
    assert "spatial_phase_steps" in text and "--trainer.strategy=ddp_find_unused_parameters_true" in text
