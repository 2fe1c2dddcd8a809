"""What nnUNetTrainerCMEDL needs of an unpaired I2I method (CycleGAN, CUT): one small interface.

An I2I method is one ``nn.Module`` (its state dict, device and train/eval mode travel together) that
- builds its networks from the plans (``I2IArchitecture``) and hyperparameters given by the trainer;
- ``generator_pass(ct, mri)``: the pseudo-MRI ``G(CT)`` and the method's weighted generator loss (the discriminators
  judge, frozen), with the unweighted terms for the log and the fakes the discriminator step needs;
- ``discriminator_loss(ct, mri, fakes)``;
- ``generator_parameters()`` / ``discriminator_parameters()``: what each optimiser trains;
- ``extra_state()`` / ``load_extra_state()``: state outside the weights (CycleGAN's image pools);
- ``compile_networks()``: torch.compile of every network in place (state-dict keys unchanged).
The teacher's segmentation loss on the pseudo-MRI is added by the trainer: it is CMEDL's, not the I2I method's.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn


@contextmanager
def frozen(*modules: nn.Module):
    """Parameters of ``modules`` get no gradients from the forward passes inside (CycleGAN's set_requires_grad)."""
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, s in zip(params, states):
            p.requires_grad_(s)


@dataclass
class GeneratorPass:
    pseudo_mri: torch.Tensor                 # G(CT): what the teacher segments
    loss: torch.Tensor                       # the method's weighted generator loss (without the teacher's term)
    terms: Dict[str, torch.Tensor]           # unweighted terms, logged as 'cmedl_G_<name>'
    fakes: Dict[str, torch.Tensor] = field(default_factory=dict)  # what the discriminator step judges


class I2IMethod(nn.Module):
    loss_names: Tuple[str, ...] = ()         # keys of GeneratorPass.terms

    @property
    def generator(self) -> nn.Module:
        """The CT -> MRI generator (the pseudo-MRI for the teacher, export-pmri and the teacher's validation)."""
        raise NotImplementedError

    def discriminator_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def generator_modules(self) -> List[nn.Module]:
        """Everything the generator optimiser trains (CUT: the generator and its MLP heads)."""
        raise NotImplementedError

    def generator_pass(self, ct: torch.Tensor, mri: torch.Tensor) -> GeneratorPass:
        raise NotImplementedError

    def discriminator_loss(self, ct: torch.Tensor, mri: torch.Tensor, fakes: Dict[str, torch.Tensor]
                           ) -> torch.Tensor:
        raise NotImplementedError

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        return (p for m in self.generator_modules() for p in m.parameters())

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return (p for m in self.discriminator_modules() for p in m.parameters())

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict, device) -> None:
        pass

    def compile_networks(self, **compile_kwargs) -> None:
        """torch.compile every network in place (``nn.Module.compile``: the state-dict keys stay as they are)."""
        for m in self.generator_modules() + self.discriminator_modules():
            m.compile(**compile_kwargs)
