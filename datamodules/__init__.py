"""Data side of videodit: webdataset shards -> decoded, bucketed or packed batches (see DESIGN.md).

The two datamodules are exported lazily, so `import datamodules.packing` stays light.
"""

__all__ = ["SyntheticVideoDataModule", "VideoShardsDataModule"]


def __getattr__(name: str):
    if name == "SyntheticVideoDataModule":
        from datamodules.synthetic import SyntheticVideoDataModule

        return SyntheticVideoDataModule
    if name == "VideoShardsDataModule":
        from datamodules.video_shards import VideoShardsDataModule

        return VideoShardsDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
