"""The I2I losses: least-squares GAN and CycleGAN's image pool (a history of 50 fakes for D); CUT's PatchNCE."""
import random

from typing import Sequence

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


def patch_nce_loss(queries: torch.Tensor, keys: torch.Tensor, batch_size: int, temperature: float = 0.07
                   ) -> torch.Tensor:
    """CUT's PatchNCELoss for one layer (Park et al. 2020), per query: the key at the same location is the positive,
    the other locations of the same image are the negatives (nce_includes_all_negatives_from_minibatch=False); keys
    are detached. ``queries``/``keys``: (batch_size * patches, dim), L2-normalised. Returns (batch_size * patches,)."""
    keys = keys.detach()
    dim = queries.shape[1]
    positives = (queries * keys).sum(dim=1, keepdim=True)
    q, k = queries.view(batch_size, -1, dim), keys.view(batch_size, -1, dim)
    patches = q.shape[1]
    negatives = torch.bmm(q, k.transpose(2, 1))
    diagonal = torch.eye(patches, device=q.device, dtype=torch.bool)[None]
    negatives = negatives.masked_fill(diagonal, -10.0).view(-1, patches)
    logits = torch.cat((positives, negatives), dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits.float(), target, reduction="none")


def multilayer_patch_nce(queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor], batch_size: int,
                         temperature: float = 0.07) -> torch.Tensor:
    """CUT's calculate_NCE_loss without the weight: the mean over layers of each layer's mean PatchNCE."""
    return torch.stack([patch_nce_loss(q, k, batch_size, temperature).mean()
                        for q, k in zip(queries, keys)]).mean()
