"""For tests/test_reliability.py: nnUNetTrainerCMEDL_tinyCPU that kills its own process (SIGKILL: no cleanup, no
finally) at the moment named by CMEDL_TEST_KILL_AT, "<point>:<epoch>":

  start           after the networks are built, before the first iteration
  iteration       in the second iteration's train_step, between the joint update and the discriminators'
  validation      in a validation step
  epoch_end       in on_epoch_end, before any checkpoint of that epoch is written
  save_partial    while checkpoint_latest.pth (or, at the last epoch, checkpoint_final.pth) is written: half its
                  bytes are on disk
  save_written    after the checkpoint is written under its temporary name, before it is renamed into place
  final_validation  in nnU-Net's validation after training (checkpoint_final.pth exists)

A seeded run (seed 7), 5 epochs of 2 iterations, a checkpoint every epoch. nnU-Net's trainer lookup imports this
folder when it is listed in nnUNet_extTrainer.
"""
import os
import signal

import torch

from nnunet_cmedl.training import nnUNetTrainerCMEDL_tinyCPU


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


class nnUNetTrainerCMEDL_killAt(nnUNetTrainerCMEDL_tinyCPU):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
        self.seed = 7
        point, _, epoch = os.environ.get("CMEDL_TEST_KILL_AT", "none:-1").partition(":")
        self.kill_point, self.kill_epoch = point, int(epoch or -1)
        self._iterations = 0

    def _due(self, point):
        return self.kill_point == point and self.current_epoch == self.kill_epoch

    def on_train_start(self):
        super().on_train_start()
        if self._due("start"):
            _kill()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iterations = 0

    def _optimize(self, *groups):
        super()._optimize(*groups)
        if not any('discriminators' in networks for _, _, networks in groups):
            self._iterations += 1
            if self._iterations == 2 and self._due("iteration"):
                _kill()

    def validation_step(self, batch):
        if self._due("validation"):
            _kill()
        return super().validation_step(batch)

    def on_epoch_end(self):
        if self._due("epoch_end"):
            _kill()
        super().on_epoch_end()

    def save_checkpoint(self, filename):
        due = [p for p in ("save_partial", "save_written") if self._due(p)] \
            if os.path.basename(filename) in ("checkpoint_latest.pth", "checkpoint_final.pth") else []
        if not due:
            return super().save_checkpoint(filename)
        real_save = torch.save

        def save_then_die(obj, f):
            real_save(obj, f)
            if due[0] == "save_partial":
                os.truncate(f, os.path.getsize(f) // 2)
            _kill()
        torch.save = save_then_die
        try:
            super().save_checkpoint(filename)
        finally:
            torch.save = real_save

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.kill_point == "final_validation":
            _kill()
        super().perform_actual_validation(save_probabilities)
