"""CUT (contrastive unpaired translation, Park et al., ECCV 2020) as CMEDL's I2I method, as in
taesungp/contrastive-unpaired-translation: one generator CT -> MRI, one PatchGAN on MRI, LSGAN, and PatchNCE between
the generator's encoder features of the input and of its output (MLP heads, 256 patches per layer, temperature 0.07).
CUT: lambda_NCE 1 with the NCE identity term on real MRI; FastCUT: lambda_NCE 10, no identity term. No MRI -> CT
generator, no image pool.

Cost: the keys (encoder features of the CT) come out of the same generator pass that makes the pseudo-MRI; the
queries need the encoder half of one more pass (on the pseudo-MRI). The identity term adds one full pass on the MRI
and one more encoder half.
"""
from typing import Dict, List

import torch
from torch import nn

from nnunet_cmedl.i2i.base import GeneratorPass, I2IMethod, frozen
from nnunet_cmedl.i2i.losses import LSGANLoss, multilayer_patch_nce
from nnunet_cmedl.i2i.networks import (I2IArchitecture, PatchGANDiscriminator, PatchSampleMLP, ResnetGenerator,
                                       init_weights_normal)


class CUT(I2IMethod):
    loss_names = ("adversarial", "nce", "nce_identity")

    def __init__(self, arch: I2IArchitecture, ct_channels: int, mri_channels: int = 1, generator_features: int = 32,
                 num_downsamplings: int = 2, num_res_blocks: int = 6, discriminator_features: int = 64,
                 discriminator_layers: int = 3, padding_mode: str = "replicate", strided_stem: bool = False,
                 lambda_adversarial: float = 1.0, lambda_nce: float = 1.0,
                 nce_identity: bool = True, nce_patches: int = 256, nce_mlp_features: int = 256,
                 nce_temperature: float = 0.07):
        super().__init__()
        arch = arch.with_padding(padding_mode)
        self.ct_to_mri = ResnetGenerator(arch, ct_channels, mri_channels, base_features=generator_features,
                                         num_downsamplings=num_downsamplings, num_res_blocks=num_res_blocks,
                                         strided_stem=strided_stem)
        self.discriminator_mri = PatchGANDiscriminator(arch, mri_channels, base_features=discriminator_features,
                                                       num_layers=discriminator_layers)
        self.apply(init_weights_normal)
        self.nce_points = self.ct_to_mri.encoder_feature_points()
        self.patch_sampler = PatchSampleMLP(self.ct_to_mri.feature_channels(self.nce_points), nce_mlp_features,
                                            nce_patches)
        self.lambda_adversarial, self.lambda_nce, self.nce_temperature = lambda_adversarial, lambda_nce, \
            nce_temperature
        self.nce_identity = nce_identity and ct_channels == mri_channels  # G(MRI) needs MRI-shaped CT input
        self.gan_loss = LSGANLoss()

    @property
    def generator(self) -> nn.Module:
        return self.ct_to_mri

    def generator_modules(self) -> List[nn.Module]:
        return [self.ct_to_mri, self.patch_sampler]

    def discriminator_modules(self) -> List[nn.Module]:
        return [self.discriminator_mri]

    def compile_networks(self, **compile_kwargs) -> None:
        # the MLP heads see a different number of sampled locations per layer: left eager (they are tiny)
        for m in (self.ct_to_mri, self.discriminator_mri):
            m.compile(**compile_kwargs)

    def nce(self, source: torch.Tensor, source_features: List[torch.Tensor], translated: torch.Tensor
            ) -> torch.Tensor:
        """PatchNCE between the source's encoder features (keys) and the translation's (queries), same locations."""
        keys, patch_ids = self.patch_sampler(source_features)
        queries, _ = self.patch_sampler(self.ct_to_mri(translated, self.nce_points, encode_only=True), patch_ids)
        return multilayer_patch_nce(queries, keys, source.shape[0], self.nce_temperature)

    def generator_pass(self, ct, mri) -> GeneratorPass:
        pseudo_mri, ct_features = self.ct_to_mri(ct, self.nce_points)
        with frozen(self.discriminator_mri):
            adversarial = self.gan_loss(self.discriminator_mri(pseudo_mri), True)
        nce = self.nce(ct, ct_features, pseudo_mri)
        if self.nce_identity:
            identity_mri, mri_features = self.ct_to_mri(mri, self.nce_points)
            nce_identity = self.nce(mri, mri_features, identity_mri)
            nce_total = 0.5 * (nce + nce_identity)  # CUT: (loss_NCE + loss_NCE_Y) * 0.5
        else:
            nce_identity = torch.zeros((), device=ct.device)
            nce_total = nce
        loss = self.lambda_adversarial * adversarial + self.lambda_nce * nce_total
        return GeneratorPass(pseudo_mri, loss, {"adversarial": adversarial, "nce": nce, "nce_identity": nce_identity},
                             {"pseudo_mri": pseudo_mri})

    def discriminator_loss(self, ct, mri, fakes: Dict[str, torch.Tensor]) -> torch.Tensor:
        """LSGAN, 0.5 x (real + fake), no image pool (CUT's pool_size 0)."""
        d = self.discriminator_mri
        return 0.5 * (self.gan_loss(d(mri), True) + self.gan_loss(d(fakes["pseudo_mri"].detach()), False))
