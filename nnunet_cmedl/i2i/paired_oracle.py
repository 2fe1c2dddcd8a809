"""Not an I2I method: an oracle in the I2I method's place, for diagnostics (issue 8).

Its "generator" takes the image channels [CT, paired MRI] and returns the MRI: the true MRI of the same patient,
which only a phantom has (``nnunet_cmedl paired-mri``). No discriminators, no generator loss. With it, CMEDL's
teacher segments the real MRI instead of a pseudo-MRI, and the hint pulls the student toward that teacher: how much
the hint could pass on if the generator were perfect. ``nnUNetTrainerCMEDL_pairedOracle`` (training/oracle.py) feeds
it the two channels.
"""
from typing import Dict, List

import torch
from torch import nn

from nnunet_cmedl.i2i.base import GeneratorPass, I2IMethod


class TrailingChannels(nn.Module):
    """x[:, first:]: the paired MRI of an input [CT, MRI] (``first``: the CT's channels)."""

    def __init__(self, first: int):
        super().__init__()
        self.first = first

    def forward(self, x):
        if x.shape[1] <= self.first:
            raise ValueError(f"the paired-MRI oracle needs the image channels [CT, paired MRI]; got {x.shape[1]} "
                             f"channel(s) (only nnUNetTrainerCMEDL_pairedOracle's batches carry the MRI)")
        return x[:, self.first:]


class PairedOracle(I2IMethod):
    loss_names = ()

    def __init__(self, arch, ct_channels: int, mri_channels: int = 1, **unused_i2i_settings):
        super().__init__()
        self.select_mri = TrailingChannels(ct_channels)
        # the trainer gives the generators and the discriminators an Adam each, and Adam refuses an empty parameter
        # list: one parameter that no loss reaches (its gradient stays None, so no step moves it)
        self.unused = nn.Parameter(torch.zeros(()))

    @property
    def generator(self) -> nn.Module:
        return self.select_mri

    def generator_modules(self) -> List[nn.Module]:  # its parameters: ``unused`` alone (TrailingChannels has none)
        return [self]

    def discriminator_modules(self) -> List[nn.Module]:
        return [self]

    def generator_pass(self, ct, mri) -> GeneratorPass:
        return GeneratorPass(self.select_mri(ct), torch.zeros((), device=ct.device), {})

    def discriminator_loss(self, ct, mri, fakes: Dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.0 * self.unused  # nothing to learn; a loss the trainer's backward accepts

    def compile_networks(self, **compile_kwargs) -> None:
        pass
