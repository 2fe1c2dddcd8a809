"""What a comparison of trainers needs beyond nnU-Net's own: a seed, and light checkpoints for learning curves.

``ExperimentMixin`` goes before any nnU-Net trainer (plain or CMEDL) in the class list:

- ``seed`` (None: nnU-Net's unseeded behaviour): seeds Python's ``random``, numpy and torch before the networks are
  built, and gives nnU-Net's data-augmentation worker processes seeds derived from it. With
  ``nnUNet_n_proc_DA=0`` (batches made in the main process) and on the CPU, a run repeats bit for bit; with worker
  processes each worker's random stream repeats, but the order in which workers deliver batches does not (nnU-Net's
  ``NonDetMultiThreadedAugmenter``), and CUDA kernels are not forced to be deterministic. Multi-GPU: rank 0 uses
  ``seed``, the other ranks seeds derived from (seed, rank) (``ddp.rank_seed``), so that they draw other batches;
  DDP gives every rank rank 0's initial weights.
- ``curve_checkpoint_every`` (0: off): every that many epochs, ``checkpoint_epoch_NNNN.pth`` beside nnU-Net's
  checkpoints, holding what ``nnUNetv2_predict -chk`` needs (the network weights, init args, trainer name,
  mirroring axes) and nothing to resume from: learning curves from one run, evaluated on test data afterwards.

``RandomStreams``: random streams of their own, swapped in for Python's, numpy's and torch's global ones while code
runs that must not draw from them. CMEDL builds its teacher and I2I networks and runs its training step inside its
own streams, so that a seeded CMEDL run's student starts from plain nnU-Net's initial weights and sees plain nnU-Net's
batches (nnU-Net draws them from the global streams): with the hint off, its student is plain nnU-Net's, bit for bit
on the CPU, and a comparison of methods at one seed differs only by what the method changes.
"""
import os
import random
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunet_cmedl.distillation.hint import unwrap
from nnunet_cmedl.training.ddp import rank_seed
from mri_unpaired.atomic import atomic_path, remove_stale_temps

CURVE_CHECKPOINT_PATTERN = "checkpoint_epoch_{:04d}.pth"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def global_random_state() -> dict:
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}


def set_global_random_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())


# where a checkpoint keeps the random streams (rank 0's; multi-GPU: every rank's too): CMEDL's checkpoints and those of
# a seeded plain trainer with ExperimentMixin
RNG_KEY, RNG_PER_RANK_KEY = 'cmedl_rng_state', 'cmedl_rng_state_per_rank'


def every_ranks_random_state(trainer, state: dict):
    """Multi-GPU: every rank's ``state``, gathered (nnU-Net calls save_checkpoint on every rank under the same
    conditions, so every rank takes part); None in one process or when no checkpoint is written."""
    if not trainer.is_ddp or trainer.disable_checkpointing:
        return None
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, state)
    return per_rank


def random_state_of_this_rank(trainer, checkpoint: dict):
    """The random streams this process restores: the saved ones; multi-GPU: this rank's, where the checkpoint has one
    per rank of a run of this size, else rank 0 restores the saved ones and the others keep their own (seeded by
    rank, never rank 0's, which would make the ranks draw the same batches)."""
    if not trainer.is_ddp:
        return checkpoint.get(RNG_KEY)
    per_rank = checkpoint.get(RNG_PER_RANK_KEY)
    if per_rank is not None and len(per_rank) == dist.get_world_size():
        return per_rank[trainer.local_rank]
    return checkpoint.get(RNG_KEY) if trainer.local_rank == 0 else None


class RandomStreams:
    """Python's ``random``, numpy's global and torch's CPU generator, kept apart from the global ones: inside
    ``with streams.active():`` the global functions draw from these streams, and the global streams are left as they
    were. Seeded from ``seed`` (None: fresh entropy). Nested ``active()`` calls are part of the outer one. ``state`` is
    what a checkpoint keeps (``set_global_random_state``'s format)."""

    def __init__(self, seed=None):
        entropy = np.random.SeedSequence(None if seed is None else [seed, 3]).generate_state(1)[0]
        saved = global_random_state()
        seed_everything(int(entropy))
        self.state = global_random_state()
        set_global_random_state(saved)
        self._depth = 0

    @contextmanager
    def active(self):
        if self._depth:
            yield
            return
        saved = global_random_state()
        set_global_random_state(self.state)
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self.state = global_random_state()
            set_global_random_state(saved)


def worker_seeds(seed, stream: int, n: int):
    """Distinct, repeatable seeds for n worker processes of one data stream (None: unseeded)."""
    if seed is None:
        return None
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence([seed, stream]).spawn(n)]


@contextmanager
def seeded_nnunet_augmenters(seed):
    """nnU-Net's get_dataloaders builds its worker augmenters with ``seeds=None``; within this context they get
    seeds derived from ``seed`` (stream 0: training batches, 1: validation batches)."""
    if seed is None:
        yield
        return
    streams = iter(range(2))

    class SeededAugmenter(NonDetMultiThreadedAugmenter):
        def __init__(self, *args, num_processes, seeds=None, **kwargs):
            super().__init__(*args, num_processes=num_processes,
                             seeds=worker_seeds(seed, next(streams, 2), num_processes), **kwargs)

    original = nnunet_trainer_module.NonDetMultiThreadedAugmenter
    nnunet_trainer_module.NonDetMultiThreadedAugmenter = SeededAugmenter
    try:
        yield
    finally:
        nnunet_trainer_module.NonDetMultiThreadedAugmenter = original


class ExperimentMixin:
    seed = None                  # int: a repeatable run (see the module docstring)
    curve_checkpoint_every = 0   # epochs between checkpoint_epoch_NNNN.pth (0: none)
    # A control for matched pairs (issue 8, stop 19): at the start of this epoch the global random streams (batch
    # sampling and augmentation, with nnUNet_n_proc_DA=0) are reseeded from (seed, rank, epoch), so the run leaves the
    # seed's plain run there with no change of method: how far two runs drift apart from one perturbation alone
    reseed_at_epoch = None

    def initialize(self):
        if self.seed is not None:
            seed_everything(rank_seed(self.seed, self.local_rank))
            self.print_to_log_file(f"seed {self.seed}: random, numpy and torch seeded before building the networks")
        super().initialize()

    def get_dataloaders(self):
        with seeded_nnunet_augmenters(rank_seed(self.seed, self.local_rank)):
            return super().get_dataloaders()

    # A seeded run resumed with --c draws what the uninterrupted run would have drawn: its checkpoints keep the random
    # streams (in the main process; data-augmentation workers restart with their seeds). nnUNetTrainerCMEDL writes and
    # reads them with the rest of its checkpoint; here, the same for nnU-Net's own trainers (the benchmark's plain
    # runs), around nnU-Net's save_checkpoint and load_checkpoint (which nnUNetTrainerCMEDL overrides whole).
    def save_checkpoint(self, filename: str) -> None:
        if self.seed is None:
            return super().save_checkpoint(filename)
        rng = global_random_state()
        per_rank = every_ranks_random_state(self, rng)
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        remove_stale_temps(filename)  # what a killed save left
        with atomic_path(filename) as tmp:  # nnU-Net's checkpoint with the streams, put in place in one step
            super().save_checkpoint(tmp)
            checkpoint = torch.load(tmp, weights_only=False)
            checkpoint[RNG_KEY] = rng
            if per_rank is not None:
                checkpoint[RNG_PER_RANK_KEY] = per_rank
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if self.seed is None:
            return
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location='cpu', weights_only=False)
        self.keep_random_state(checkpoint)

    def keep_random_state(self, checkpoint: dict) -> None:
        """The random streams a resumed checkpoint kept (this rank's), for on_train_start to restore."""
        self._rng_to_restore = random_state_of_this_rank(self, checkpoint)
        if self._rng_to_restore is None and self.seed is not None:
            self.print_to_log_file("this checkpoint keeps no random state: the resumed run will not draw what the "
                                   "uninterrupted one would have drawn")

    def restore_random_state(self, rng: dict) -> None:
        """Sets the streams ``global_random_state`` saved (trainers with streams of their own extend it)."""
        set_global_random_state(rng)

    def on_train_start(self):
        super().on_train_start()
        # after the loaders' start-up batches, as the uninterrupted run's streams were when its first epoch began
        rng = getattr(self, '_rng_to_restore', None)
        if rng is not None:
            self.restore_random_state(rng)
        self._rng_to_restore = None

    def on_train_epoch_start(self):
        if self.reseed_at_epoch is not None and self.current_epoch == self.reseed_at_epoch:
            seed = int(np.random.SeedSequence([0 if self.seed is None else self.seed, self.local_rank,
                                               self.current_epoch]).generate_state(1)[0])
            seed_everything(seed)
            self.print_to_log_file(f"control: global random streams reseeded ({seed}) at the start of epoch "
                                   f"{self.current_epoch}")
        super().on_train_epoch_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnUNetv2_train validates the fold after training; with nnUNet_cmedl_skip_final_validation=1 it does not.
        # Set by scripts/gpu_benchmark.py (on a bare GPU machine that validation cannot write its images and spent
        # minutes of the deadline, docs/benchmark/stop21/GPU_RUN.md) and by `nnunet_cmedl benchmark` without
        # --final-validation (it scores the test cases; the validation cost about 40 s of each CPU run, stop 23)
        if os.environ.get('nnUNet_cmedl_skip_final_validation', '0') not in ('', '0', 'false'):
            self.print_to_log_file("nnU-Net's final validation skipped (nnUNet_cmedl_skip_final_validation)")
            return
        return super().perform_actual_validation(save_probabilities)

    def on_epoch_end(self):
        epoch = self.current_epoch  # nnU-Net's on_epoch_end increments it
        super().on_epoch_end()
        if self.curve_checkpoint_every and (epoch + 1) % self.curve_checkpoint_every == 0 and self.local_rank == 0:
            self.save_curve_checkpoint(os.path.join(self.output_folder, CURVE_CHECKPOINT_PATTERN.format(epoch + 1)))

    def save_curve_checkpoint(self, filename: str) -> None:
        """The weights after this epoch, loadable by ``nnUNetv2_predict -chk`` (not resumable)."""
        checkpoint = {'network_weights': unwrap(self.network).state_dict(), 'init_args': self.my_init_kwargs,
                      'trainer_name': self.__class__.__name__, 'current_epoch': self.current_epoch,
                      'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes}
        with atomic_path(filename) as tmp:
            torch.save(checkpoint, tmp)
