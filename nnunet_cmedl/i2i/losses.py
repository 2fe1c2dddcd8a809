"""CycleGAN's losses and image pool (least-squares GAN, L1 cycle/identity, a history of 50 fakes for D)."""
import random

import torch
from torch import nn


class LSGANLoss(nn.Module):
    """Least-squares adversarial loss (Mao et al.): MSE of the discriminator's patch scores to 1 (real) or 0 (fake)."""

    def forward(self, scores: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.ones_like(scores) if target_is_real else torch.zeros_like(scores)
        return nn.functional.mse_loss(scores, target)


class ImagePool:
    """Keeps up to ``pool_size`` earlier fakes; the discriminator sees, per sample, the new fake or (p=0.5) a stored
    one that the new fake replaces (Shrivastava et al.; CycleGAN's ``ImagePool``). Reduces D's oscillation."""

    def __init__(self, pool_size: int = 50):
        self.pool_size = pool_size
        self.images: list = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                i = random.randrange(self.pool_size)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"pool_size": self.pool_size, "images": [i.cpu() for i in self.images]}

    def load_state_dict(self, state: dict, device) -> None:
        self.pool_size = state["pool_size"]
        self.images = [i.to(device) for i in state["images"]]
