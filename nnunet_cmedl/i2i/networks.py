"""CycleGAN-style networks for unpaired CT <-> MRI translation, built for any nnU-Net configuration.

Small blocks composed into networks, as in dynamic-network-architectures: the conv/norm ops (2d or 3d), kernel
sizes and down-sampling strides come from the configuration's plans (``I2IArchitecture.from_configuration``), so
the same code serves 2d and 3d, isotropic and anisotropic configurations, and the networks fit the patch (nnU-Net
chose those strides so that every patch axis stays divisible).

Departures from the CycleGAN reference, and why:
- the output is linear, not tanh: nnU-Net's normalised intensities (CT z-scored with dataset statistics, MRI
  z-scored per image) are not bounded to [-1, 1];
- kernels are the plans' (3 or 1 per axis) rather than 7x7 stems, and up-sampling is a transposed conv with
  kernel == stride: cheap in 3d and shape-exact for every stride pattern;
- replicate padding (CycleGAN: reflect) because reflect padding fails on axes of size 1.
"""
import pydoc
from dataclasses import dataclass
from typing import List, Sequence, Type

import torch
from torch import nn


@dataclass
class I2IArchitecture:
    """What the I2I networks take from a configuration of the plans."""
    conv_op: Type[nn.Module]
    norm_op: Type[nn.Module]
    kernel_sizes: List[List[int]]      # one per resolution stage, from the plans
    strides: List[List[int]]           # stride into each stage, from the plans (strides[0] is all ones)

    @classmethod
    def from_configuration(cls, configuration_manager) -> "I2IArchitecture":
        kwargs = configuration_manager.network_arch_init_kwargs
        conv_op = kwargs["conv_op"]
        conv_op = pydoc.locate(conv_op) if isinstance(conv_op, str) else conv_op
        dim = 2 if conv_op is nn.Conv2d else 3
        return cls(conv_op=conv_op, norm_op=nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d,
                   kernel_sizes=[list(k) for k in kwargs["kernel_sizes"]],
                   strides=[list(s) for s in kwargs["strides"]])

    @property
    def transposed_conv_op(self) -> Type[nn.Module]:
        return nn.ConvTranspose2d if self.conv_op is nn.Conv2d else nn.ConvTranspose3d

    def stage(self, i: int):
        """(kernel, stride) of resolution stage i, clamped to the last stage the plans have."""
        i = min(i, len(self.strides) - 1)
        return self.kernel_sizes[i], self.strides[i]


def same_padding(kernel_size: Sequence[int]) -> List[int]:
    return [(k - 1) // 2 for k in kernel_size]


class ConvNormAct(nn.Sequential):
    def __init__(self, arch: I2IArchitecture, in_ch: int, out_ch: int, kernel_size, stride=1, norm: bool = True,
                 act: nn.Module = None):
        layers = [arch.conv_op(in_ch, out_ch, kernel_size, stride, padding=same_padding(kernel_size),
                               padding_mode="replicate", bias=not norm)]
        if norm:
            layers.append(arch.norm_op(out_ch, affine=True))
        layers.append(act if act is not None else nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResnetBlock(nn.Module):
    def __init__(self, arch: I2IArchitecture, channels: int, kernel_size):
        super().__init__()
        self.block = nn.Sequential(
            ConvNormAct(arch, channels, channels, kernel_size),
            arch.conv_op(channels, channels, kernel_size, padding=same_padding(kernel_size),
                         padding_mode="replicate", bias=False),
            arch.norm_op(channels, affine=True))

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: stem, ``num_downsamplings`` strided convs, residual blocks, mirrored up-path."""

    def __init__(self, arch: I2IArchitecture, in_channels: int, out_channels: int, base_features: int = 32,
                 num_downsamplings: int = 2, num_res_blocks: int = 6, max_features: int = 256):
        super().__init__()
        stem_kernel, _ = arch.stage(0)
        features = [min(base_features * 2 ** i, max_features) for i in range(num_downsamplings + 1)]
        layers: List[nn.Module] = [ConvNormAct(arch, in_channels, features[0], stem_kernel)]
        for i in range(num_downsamplings):
            kernel, stride = arch.stage(i + 1)
            layers.append(ConvNormAct(arch, features[i], features[i + 1], kernel, stride))
        bottleneck_kernel, _ = arch.stage(num_downsamplings)
        layers += [ResnetBlock(arch, features[-1], bottleneck_kernel) for _ in range(num_res_blocks)]
        for i in reversed(range(num_downsamplings)):
            _, stride = arch.stage(i + 1)
            layers += [arch.transposed_conv_op(features[i + 1], features[i], stride, stride, bias=False),
                       arch.norm_op(features[i], affine=True), nn.ReLU(inplace=True)]
        layers.append(arch.conv_op(features[0], out_channels, stem_kernel, padding=same_padding(stem_kernel),
                                   padding_mode="replicate"))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PatchGANDiscriminator(nn.Module):
    """CycleGAN's N-layer PatchGAN: a map of real/fake scores, one per receptive-field patch (LSGAN: no sigmoid)."""

    def __init__(self, arch: I2IArchitecture, in_channels: int, base_features: int = 64, num_layers: int = 3,
                 max_features: int = 512):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        layers: List[nn.Module] = []
        ch_in = in_channels
        for i in range(num_layers):
            _, stride = arch.stage(i + 1)
            kernel = [4 if s == 2 else 3 for s in stride]  # CycleGAN's k4/s2, padding 1 halves exactly
            ch_out = min(base_features * 2 ** i, max_features)
            layers.append(ConvNormAct(arch, ch_in, ch_out, kernel, stride, norm=i > 0, act=act()))
            ch_in = ch_out
        last_kernel = [3] * len(arch.strides[0])
        ch_out = min(base_features * 2 ** num_layers, max_features)
        layers += [ConvNormAct(arch, ch_in, ch_out, last_kernel, act=act()),
                   arch.conv_op(ch_out, 1, last_kernel, padding=same_padding(last_kernel))]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights_normal(module: nn.Module, gain: float = 0.02) -> None:
    """CycleGAN's 'normal' initialisation: conv weights ~ N(0, 0.02), norm weights ~ N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.normal_(module.weight, 0.0, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, gain)
        nn.init.zeros_(module.bias)


class CycleGAN(nn.Module):
    """The I2I part of CMEDL: two generators and one discriminator per domain.

    ``ct_to_mri`` makes the pseudo-MRI the teacher segments; the other three exist for the cycle and adversarial
    losses. One module so that its state dict, device placement and train/eval mode travel together.
    """

    def __init__(self, arch: I2IArchitecture, ct_channels: int, mri_channels: int = 1, generator_features: int = 32,
                 num_downsamplings: int = 2, num_res_blocks: int = 6, discriminator_features: int = 64,
                 discriminator_layers: int = 3):
        super().__init__()
        gen = dict(base_features=generator_features, num_downsamplings=num_downsamplings,
                   num_res_blocks=num_res_blocks)
        self.ct_to_mri = ResnetGenerator(arch, ct_channels, mri_channels, **gen)
        self.mri_to_ct = ResnetGenerator(arch, mri_channels, ct_channels, **gen)
        disc = dict(base_features=discriminator_features, num_layers=discriminator_layers)
        self.discriminator_mri = PatchGANDiscriminator(arch, mri_channels, **disc)
        self.discriminator_ct = PatchGANDiscriminator(arch, ct_channels, **disc)
        self.apply(init_weights_normal)

    @property
    def generators(self) -> nn.ModuleList:
        return nn.ModuleList([self.ct_to_mri, self.mri_to_ct])

    @property
    def discriminators(self) -> nn.ModuleList:
        return nn.ModuleList([self.discriminator_mri, self.discriminator_ct])
