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


class SegmenterOnTranslated(nn.Module):
    """labelled image -> generator -> translated image -> segmenter, one module (CT -> pMRI in the paper's direction,
    MRI -> pseudo-CT with an MRI-labelled dataset): the teacher's validation in CMEDL, and the whole network of the
    paper's pMRI-only strategy (``with_ct``: the segmenter sees the channels [labelled, translated], the CT+pMRI
    strategy), so that stock nnU-Net inference runs both. ``decoder`` is the segmenter's (nnU-Net switches deep
    supervision through ``network.decoder``)."""

    def __init__(self, generator: nn.Module, segmenter: nn.Module, with_ct: bool = False):
        super().__init__()
        self.generator, self.segmenter, self.with_ct = generator, segmenter, with_ct

    @property
    def decoder(self) -> nn.Module:
        return self.segmenter.decoder

    def segment(self, ct: torch.Tensor, pseudo_mri: torch.Tensor):
        return self.segmenter(torch.cat([ct, pseudo_mri], 1) if self.with_ct else pseudo_mri)

    def forward(self, ct):
        return self.segment(ct, self.generator(ct))
