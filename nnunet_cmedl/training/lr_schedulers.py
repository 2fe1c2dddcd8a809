from torch.optim.lr_scheduler import _LRScheduler


class ConstantThenLinearDecayLR(_LRScheduler):
    """CycleGAN's 'linear' policy in epochs: the initial learning rate for the first ``constant_fraction`` of the
    epochs, then a linear decay to zero. Stepped like nnU-Net's PolyLRScheduler (``step(current_epoch)``)."""

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, constant_fraction: float = 0.5):
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.num_epochs = num_epochs
        self.constant_fraction = constant_fraction
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: int) -> float:
        constant_epochs = int(round(self.num_epochs * self.constant_fraction))
        decay_epochs = max(1, self.num_epochs - constant_epochs)
        return self.initial_lr * (1.0 - max(0, epoch - constant_epochs) / decay_epochs)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
