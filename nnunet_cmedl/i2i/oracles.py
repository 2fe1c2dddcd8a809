"""Not I2I methods: fixed stand-ins in the I2I method's place, for diagnostics (issue 8).

Each "generator" is a fixed function of the image channels, with no discriminators and no generator loss, so that
CMEDL's teacher segments something chosen for the diagnostic instead of a learned pseudo-MRI:
- ``PairedOracle`` ("paired_oracle"): the image channels are [CT, paired MRI] and it returns the MRI, the true MRI of
  the same patient, which only a phantom has (``nnunet_cmedl paired-mri``). The hint then pulls the student toward a
  teacher on the real MRI: how much the hint could pass on if the generator were perfect.
  ``nnUNetTrainerCMEDL_pairedOracle`` (training/oracle.py) feeds it the two channels.
- ``NoTranslation`` ("no_translation"): returns the CT itself. The teacher is a second CT network (warm-started, in
  ``nnUNetTrainerCMEDL_ctTeacher``, from a plain nnU-Net trained on more labels): does the hint pass on what a
  better teacher knows when the teacher's features are a function of the very input the student sees?
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


class FixedTranslation(I2IMethod):
    """An I2I method whose generator is the fixed module ``translate``: nothing to learn, no loss."""
    loss_names = ()

    def __init__(self, translate: nn.Module):
        super().__init__()
        self.translate = translate
        # the trainer gives the generators and the discriminators an Adam each, and Adam refuses an empty parameter
        # list: one parameter that no loss reaches (its gradient stays None, so no step moves it)
        self.unused = nn.Parameter(torch.zeros(()))

    @property
    def generator(self) -> nn.Module:
        return self.translate

    def generator_modules(self) -> List[nn.Module]:  # its parameters: ``unused`` alone (``translate`` has none)
        return [self]

    def discriminator_modules(self) -> List[nn.Module]:
        return [self]

    def generator_pass(self, ct, mri) -> GeneratorPass:
        return GeneratorPass(self.translate(ct), torch.zeros((), device=ct.device), {})

    def discriminator_loss(self, ct, mri, fakes: Dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.0 * self.unused  # nothing to learn; a loss the trainer's backward accepts

    def compile_networks(self, **compile_kwargs) -> None:
        pass


class PairedOracle(FixedTranslation):
    def __init__(self, arch, ct_channels: int, mri_channels: int = 1, **unused_i2i_settings):
        super().__init__(TrailingChannels(ct_channels))


class NoTranslation(FixedTranslation):
    def __init__(self, arch, ct_channels: int, mri_channels: int = 1, **unused_i2i_settings):
        if mri_channels != ct_channels:
            raise ValueError(f"no_translation: the teacher takes the CT itself, so mri_channels ({mri_channels}) must "
                             f"equal ct_channels ({ct_channels})")
        super().__init__(nn.Identity())
