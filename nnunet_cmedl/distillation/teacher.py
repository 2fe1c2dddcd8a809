"""CMEDL's teacher: nnU-Net's network on the pseudo-MRI, trained with the CT labels.

Its segmentation loss on G(CT) trains the teacher and, weighted ``lambda`` (PSIGAN/CMEDL), also the generator. One
forward and one backward give both gradients: the pseudo-MRI enters the teacher through ``scale_gradient``, which
leaves the values as they are and multiplies the gradient flowing back into the generator by ``lambda``.
"""
import torch
from torch import nn


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; ``scale * grad`` in the backward pass (0: as if detached)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    detached = x.detach()
    return detached + scale * (x - detached)


class TeacherOnPseudoMRI(nn.Module):
    """CT -> generator -> pMRI -> teacher: lets nnU-Net's validation step measure the teacher on pMRI."""

    def __init__(self, generator: nn.Module, teacher: nn.Module):
        super().__init__()
        self.generator, self.teacher = generator, teacher

    def forward(self, ct):
        return self.teacher(self.generator(ct))
