"""`FSDP2Strategy`: fully sharded data parallel (torch's `fully_shard`) over every process.

Lightning's `ModelParallelStrategy` runs FSDP2 through `LightningModule.configure_model`, on a 2D
(data parallel x tensor parallel) device mesh whose data-parallel size defaults to the number of
nodes: on one node all ranks would be tensor-parallel peers and the data sampler would give every
rank the same batches. This subclass makes the whole world the data-parallel dimension (the
sampler gives each rank its own share, like DDP) with no tensor parallelism, which is what
`VideoDiffusion.configure_model` shards over. Used by configs/train/fsdp.yaml.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    def __init__(self, *, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None):
        """save_distributed_checkpoint: a directory per checkpoint written by every rank (False: one
        full-state file written by rank 0); process_group_backend: None = nccl on GPU, gloo on CPU."""
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank its own data
        super().setup_environment()
