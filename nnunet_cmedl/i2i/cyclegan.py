"""CycleGAN (Zhu et al., ICCV 2017) as CMEDL's I2I method: CT <-> MRI generators, one PatchGAN per domain, LSGAN,
L1 cycle and (optional) identity losses, image pools of earlier fakes for the discriminators."""
from typing import Dict, List

import torch
from torch import nn

from nnunet_cmedl.i2i.base import GeneratorPass, I2IMethod, frozen
from nnunet_cmedl.i2i.losses import ImagePool, LSGANLoss
from nnunet_cmedl.i2i.networks import I2IArchitecture, PatchGANDiscriminator, ResnetGenerator, init_weights_normal


class CycleGAN(I2IMethod):
    """``ct_to_mri`` makes the pseudo-MRI the teacher segments; ``mri_to_ct`` and the discriminators exist for the
    cycle and adversarial losses. Without identity terms a generator pass costs 4 generator forwards (pMRI, fake CT,
    two cycles); with them 6."""
    loss_names = ("adversarial", "cycle", "identity")

    def __init__(self, arch: I2IArchitecture, ct_channels: int, mri_channels: int = 1, generator_features: int = 32,
                 num_downsamplings: int = 2, num_res_blocks: int = 6, discriminator_features: int = 64,
                 discriminator_layers: int = 3, padding_mode: str = "replicate", strided_stem: bool = False,
                 lambda_adversarial: float = 1.0, lambda_cycle: float = 10.0,
                 lambda_identity: float = 0.0, image_pool_size: int = 50):
        super().__init__()
        arch = arch.with_padding(padding_mode)
        gen = dict(base_features=generator_features, num_downsamplings=num_downsamplings,
                   num_res_blocks=num_res_blocks, strided_stem=strided_stem)
        self.ct_to_mri = ResnetGenerator(arch, ct_channels, mri_channels, **gen)
        self.mri_to_ct = ResnetGenerator(arch, mri_channels, ct_channels, **gen)
        disc = dict(base_features=discriminator_features, num_layers=discriminator_layers)
        self.discriminator_mri = PatchGANDiscriminator(arch, mri_channels, **disc)
        self.discriminator_ct = PatchGANDiscriminator(arch, ct_channels, **disc)
        self.apply(init_weights_normal)
        self.lambda_adversarial, self.lambda_cycle, self.lambda_identity = \
            lambda_adversarial, lambda_cycle, lambda_identity
        self.gan_loss = LSGANLoss()
        self.pool_pseudo_mri, self.pool_fake_ct = ImagePool(image_pool_size), ImagePool(image_pool_size)

    @property
    def generator(self) -> nn.Module:
        return self.ct_to_mri

    def generator_modules(self) -> List[nn.Module]:
        return [self.ct_to_mri, self.mri_to_ct]

    def discriminator_modules(self) -> List[nn.Module]:
        return [self.discriminator_mri, self.discriminator_ct]

    def generator_pass(self, ct, mri) -> GeneratorPass:
        to_mri, to_ct = self.ct_to_mri, self.mri_to_ct
        pseudo_mri, fake_ct = to_mri(ct), to_ct(mri)
        with frozen(*self.discriminator_modules()):  # judges here, trained in their own step
            adversarial = (self.gan_loss(self.discriminator_mri(pseudo_mri), True)
                           + self.gan_loss(self.discriminator_ct(fake_ct), True))
        cycle = nn.functional.l1_loss(to_ct(pseudo_mri), ct) + nn.functional.l1_loss(to_mri(fake_ct), mri)
        if self.lambda_identity > 0 and ct.shape[1] == mri.shape[1]:
            identity = nn.functional.l1_loss(to_mri(mri), mri) + nn.functional.l1_loss(to_ct(ct), ct)
        else:  # off, or impossible (multi-channel CT has no MRI-shaped identity): no generator pass spent on it
            identity = torch.zeros((), device=ct.device)
        # CycleGAN: identity weighted lambda_identity x lambda_cycle
        loss = (self.lambda_adversarial * adversarial + self.lambda_cycle * cycle
                + self.lambda_identity * self.lambda_cycle * identity)
        return GeneratorPass(pseudo_mri, loss, {"adversarial": adversarial, "cycle": cycle, "identity": identity},
                             {"pseudo_mri": pseudo_mri, "fake_ct": fake_ct})

    def discriminator_loss(self, ct, mri, fakes: Dict[str, torch.Tensor]) -> torch.Tensor:
        """LSGAN, 0.5 x (real + fake) per domain, fakes drawn through the image pools."""
        d_mri, d_ct = self.discriminator_mri, self.discriminator_ct
        pseudo_mri = self.pool_pseudo_mri.query(fakes["pseudo_mri"].detach())
        fake_ct = self.pool_fake_ct.query(fakes["fake_ct"].detach())
        loss_mri = self.gan_loss(d_mri(mri), True) + self.gan_loss(d_mri(pseudo_mri), False)
        loss_ct = self.gan_loss(d_ct(ct), True) + self.gan_loss(d_ct(fake_ct), False)
        return 0.5 * (loss_mri + loss_ct)

    def extra_state(self) -> dict:
        return {"image_pools": {"pseudo_mri": self.pool_pseudo_mri.state_dict(),
                                "fake_ct": self.pool_fake_ct.state_dict()}}

    def load_extra_state(self, state: dict, device) -> None:
        pools = state["image_pools"]
        self.pool_pseudo_mri.load_state_dict(pools["pseudo_mri"], device)
        self.pool_fake_ct.load_state_dict(pools["fake_ct"], device)
