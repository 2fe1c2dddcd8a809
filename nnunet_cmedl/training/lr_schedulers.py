"""The GAN part's learning-rate schedule, CycleGAN's 'linear' policy, as a torch LambdaLR."""
import warnings

from torch.optim.lr_scheduler import LambdaLR


def constant_then_linear_decay(optimizer, num_epochs: int, constant_fraction: float = 0.5) -> LambdaLR:
    """The optimizer's learning rate for the first ``constant_fraction`` of the epochs, then a linear decay to zero.
    Step it once per epoch with ``set_epoch``."""
    constant_epochs = int(round(num_epochs * constant_fraction))
    decay_epochs = max(1, num_epochs - constant_epochs)
    return LambdaLR(optimizer, lambda epoch: 1.0 - max(0, epoch - constant_epochs) / decay_epochs)


def set_epoch(scheduler: LambdaLR, epoch: int) -> None:
    """The learning rate of ``epoch``, set the way nnU-Net's PolyLRScheduler.step(current_epoch) sets its own
    (without LambdaLR's deprecated epoch argument): right after a resume as in an uninterrupted run."""
    scheduler.last_epoch = epoch - 1
    with warnings.catch_warnings():  # epoch 0 is set before the first optimizer step, on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before")
        scheduler.step()
