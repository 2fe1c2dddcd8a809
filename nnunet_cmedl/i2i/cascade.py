"""CMEDL on the second stage of nnU-Net's cascade (``3d_cascade_fullres``): only the image channels are translated.

That stage's input is the image channels followed by the previous stage's segmentation, one-hot, one channel per
foreground label (nnU-Net's ``determine_num_input_channels``). An I2I method must not translate a segmentation
into MRI, nor learn to make one from MRI: it works on the image channels alone (its discriminators judge them alone
too), and the segmentation channels pass around the generator unchanged. The teacher therefore gets
[pMRI, segmentation of the previous stage], the same segmentation channels the student gets beside the CT, and
``generator`` (the teacher's validation, export-pmri) maps [CT, segmentation] to [pMRI, segmentation].

``I2IArchitecture.from_configuration`` records the number of image channels of a cascade's configuration (its
normalisation schemes: one per image channel); ``build_i2i`` then builds the method with ``image_channels_only``.
"""
import dataclasses
from typing import Dict, Type

import torch
from torch import nn

from nnunet_cmedl.errors import UnsupportedSetup
from nnunet_cmedl.i2i.base import GeneratorPass, I2IMethod


def previous_stage_channels(configuration_manager, num_input_channels: int) -> int:
    """How many of a configuration's input channels carry the previous stage's segmentation (0 but in a cascade)."""
    if configuration_manager.previous_stage_name is None:
        return 0
    return num_input_channels - len(configuration_manager.normalization_schemes)


class PassPreviousStage(nn.Module):
    """``generator`` on the first ``image_channels`` channels, the channels after them appended unchanged."""

    def __init__(self, generator: nn.Module, image_channels: int):
        super().__init__()
        self.generator, self.image_channels = generator, image_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.generator(x[:, :self.image_channels]), x[:, self.image_channels:]], 1)


class ImageChannelsOnly:
    """Mixin for an ``I2IMethod`` on a cascade's configuration: built for, and run on, the image channels; the
    pseudo-MRI it hands to the teacher carries the previous stage's channels after it. The state dict is the
    method's own (no wrapper prefix)."""

    def __init__(self, arch, ct_channels: int, **kwargs):
        if arch.image_channels is None or not 0 < arch.image_channels < ct_channels:
            raise ValueError(f"{type(self).__name__}: {ct_channels} input channels, of which "
                             f"{arch.image_channels} image channels: expected fewer image channels than inputs")
        super().__init__(arch, ct_channels=arch.image_channels, **kwargs)
        self.image_channels = arch.image_channels

    @property
    def generator(self) -> nn.Module:
        return PassPreviousStage(super().generator, self.image_channels)

    def generator_pass(self, ct: torch.Tensor, mri: torch.Tensor) -> GeneratorPass:
        image, previous_stage = ct[:, :self.image_channels], ct[:, self.image_channels:]
        result = super().generator_pass(image, mri)
        return dataclasses.replace(result, pseudo_mri=torch.cat([result.pseudo_mri, previous_stage], 1))

    def discriminator_loss(self, ct: torch.Tensor, mri: torch.Tensor, fakes: Dict[str, torch.Tensor]
                           ) -> torch.Tensor:
        return super().discriminator_loss(ct[:, :self.image_channels], mri, fakes)


_IMAGE_CHANNELS_ONLY: Dict[type, type] = {}


def image_channels_only(method: Type[I2IMethod]) -> Type[I2IMethod]:
    """``method`` with ``ImageChannelsOnly`` mixed in (one class per method)."""
    if method not in _IMAGE_CHANNELS_ONLY:
        _IMAGE_CHANNELS_ONLY[method] = type(method.__name__ + "OnImageChannels", (ImageChannelsOnly, method),
                                            {"__module__": __name__})
    return _IMAGE_CHANNELS_ONLY[method]


def refuse_cascade(trainer, why: str) -> None:
    """One line (``UnsupportedSetup``) if ``trainer`` runs on a cascade's configuration, which it cannot (``why``)."""
    previous = trainer.configuration_manager.previous_stage_name
    if previous is not None:
        raise UnsupportedSetup(
            f"{type(trainer).__name__}: configuration {trainer.configuration_name} is the second stage of a cascade "
            f"(its input carries the segmentation of {previous} as extra channels), which {why}. nnUNetTrainerCMEDL "
            f"supports it (only the image channels are translated); or train this trainer on 3d_fullres or "
            f"{previous}")
