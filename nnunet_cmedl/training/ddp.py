"""Multi-GPU training (``nnUNetv2_train ... -num_gpus N``): what nnUNetTrainerCMEDL needs beyond nnU-Net's own DDP.

nnU-Net wraps only ``self.network`` in ``DistributedDataParallel`` (DDP). CMEDL trains several networks, and its
training step does not call them as ``network(x)``: the student and the teacher run through feature taps, the I2I
method through ``generator_pass`` / ``discriminator_loss``, whose forward calls several networks (and the
discriminators frozen, as judges). DDP all-reduces a parameter's gradient only in a backward that follows a forward
*through the DDP module* (its reducer ignores gradients computed outside its forward). So each network with an
optimiser is wrapped as the pass that trains it: ``TrainingPass(fn, networks)`` is a module whose forward is ``fn``
and whose parameters are exactly those of ``networks``; DDP of it broadcasts rank 0's initial weights and averages
exactly those networks' gradients in the backward of the step. A network used inside another network's pass without
being trained there (the discriminators judging the generators' fakes) is called unwrapped and is not a parameter of
that pass: no gradient bookkeeping of its own DDP is touched, so ``find_unused_parameters`` is not needed.

See docs/ddp.md.
"""
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


class TrainingPass(nn.Module):
    """``fn`` as a module whose parameters are those of ``networks``: what DDP wraps so that a training step's
    forward (a feature tap, an I2I method's generator pass, ...) runs inside DDP's bookkeeping. ``fn`` is not a
    submodule (a tap sharing the networks' parameters would register them twice); the state dict is never saved."""

    def __init__(self, fn: Callable, networks: Sequence[nn.Module]):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        object.__setattr__(self, 'fn', fn)

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def wrap_in_ddp(module: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP as nnU-Net wraps the student: BatchNorm layers made SyncBatchNorm, ``device_ids`` on CUDA (none on the CPU,
    gloo), rank 0's weights broadcast to every rank at construction."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == 'cuda' else None)


def rank_seed(seed, rank: int):
    """The seed of one rank's random streams: ``seed`` itself on rank 0 (and in single-process runs), one derived from
    (seed, rank) on the others, so that the ranks of a seeded run draw different batches (None stays None)."""
    if seed is None or rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def all_ranks_agree(flags: torch.Tensor) -> torch.Tensor:
    """DDP: ``flags`` (bool) true on every rank, the same result on every rank (an all-reduce with MIN)."""
    flags = flags.to(torch.uint8)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return flags.bool()


def gather_from_all_ranks(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """DDP: each rank's collated per-iteration values (name -> array, iterations first), concatenated over the ranks
    in rank order; the same on every rank (nnU-Net gathers its train and validation losses so)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, arrays)
    return {k: np.concatenate([np.asarray(g[k]) for g in gathered]) for k in arrays}
