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
- padding is the trainer's choice (``i2i_padding_mode``): zeros like nnU-Net's own convs (no padded copy of every
  activation), or replicate (CycleGAN: reflect, which fails on axes of size 1; nnunet-cmedl 0.1 used replicate);
- ``strided_stem``: the first conv already takes the first down-sampling stride of the plans and the last layer is a
  transposed conv back to full resolution (a learned depth-to-space), so no layer with many channels runs at full
  resolution: the generator works one resolution stage lower.
"""
import dataclasses
import pydoc
from dataclasses import dataclass
from typing import List, Optional, Sequence, Type

import torch
from torch import nn


@dataclass
class I2IArchitecture:
    """What the I2I networks take from a configuration of the plans."""
    conv_op: Type[nn.Module]
    norm_op: Type[nn.Module]
    kernel_sizes: List[List[int]]      # one per resolution stage, from the plans
    strides: List[List[int]]           # stride into each stage, from the plans (strides[0] is all ones)
    padding_mode: str = "replicate"    # of every conv ("zeros", "replicate")
    # a cascade's second stage: how many of the input channels are image channels (the others carry the previous
    # stage's segmentation, which the I2I method must not translate: cascade.py); None elsewhere
    image_channels: Optional[int] = None

    def with_padding(self, padding_mode: str) -> "I2IArchitecture":
        return dataclasses.replace(self, padding_mode=padding_mode)

    @classmethod
    def from_configuration(cls, configuration_manager) -> "I2IArchitecture":
        kwargs = configuration_manager.network_arch_init_kwargs
        conv_op = kwargs["conv_op"]
        conv_op = pydoc.locate(conv_op) if isinstance(conv_op, str) else conv_op
        dim = 2 if conv_op is nn.Conv2d else 3
        cascade = configuration_manager.previous_stage_name is not None
        return cls(conv_op=conv_op, norm_op=nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d,
                   kernel_sizes=[list(k) for k in kwargs["kernel_sizes"]],
                   strides=[list(s) for s in kwargs["strides"]],
                   image_channels=len(configuration_manager.normalization_schemes) if cascade else None)

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
                               padding_mode=arch.padding_mode, bias=not norm)]
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
                         padding_mode=arch.padding_mode, bias=False),
            arch.norm_op(channels, affine=True))

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: stem, ``num_downsamplings`` strided convs, residual blocks, mirrored up-path.

    ``forward(x, feature_points)`` also returns encoder features for CUT's PatchNCE: point 0 is the input image and
    point k the output of ``model[k - 1]`` (``encoder_feature_points`` lists CUT's default choice). The features come
    out as return values, not hooks, so they survive torch.compile.
    """

    def __init__(self, arch: I2IArchitecture, in_channels: int, out_channels: int, base_features: int = 32,
                 num_downsamplings: int = 2, num_res_blocks: int = 6, max_features: int = 256,
                 strided_stem: bool = False):
        super().__init__()
        first = 1 if strided_stem else 0  # the plans' stage the stem works at
        # no more down-sampling than the plans have stages: every stride then keeps the patch divisible
        num_downsamplings = min(num_downsamplings, len(arch.strides) - 1 - first)
        stem_kernel, stem_stride = arch.stage(first)
        self.num_downsamplings, self.num_res_blocks = num_downsamplings, num_res_blocks
        self.features = [min(base_features * 2 ** i, max_features) for i in range(num_downsamplings + 1)]
        features = self.features
        layers: List[nn.Module] = [ConvNormAct(arch, in_channels, features[0], stem_kernel, stem_stride)]
        for i in range(num_downsamplings):
            kernel, stride = arch.stage(first + i + 1)
            layers.append(ConvNormAct(arch, features[i], features[i + 1], kernel, stride))
        bottleneck_kernel, _ = arch.stage(first + num_downsamplings)
        layers += [ResnetBlock(arch, features[-1], bottleneck_kernel) for _ in range(num_res_blocks)]
        for i in reversed(range(num_downsamplings)):
            _, stride = arch.stage(first + i + 1)
            layers += [arch.transposed_conv_op(features[i + 1], features[i], stride, stride, bias=False),
                       arch.norm_op(features[i], affine=True), nn.ReLU(inplace=True)]
        if strided_stem:  # back to full resolution: each voxel a learned linear map of its stage-1 features
            layers.append(arch.transposed_conv_op(features[0], out_channels, stem_stride, stem_stride))
        else:
            layers.append(arch.conv_op(features[0], out_channels, stem_kernel, padding=same_padding(stem_kernel),
                                       padding_mode=arch.padding_mode))
        self.model = nn.Sequential(*layers)
        self.in_channels = in_channels

    def encoder_feature_points(self) -> List[int]:
        """CUT's nce_layers mapped to this generator at any depth: the input, every down-sampling conv, the first
        and the middle residual block (the reference, 9 blocks: input, both down-sampling convs, blocks 1 and 5)."""
        nd, nr = self.num_downsamplings, self.num_res_blocks
        points = [0] + [2 + i for i in range(nd)] + ([2 + nd, 2 + nd + nr // 2] if nr else [])
        return sorted(set(points))

    def feature_channels(self, points: Sequence[int]) -> List[int]:
        """Channel count at each feature point."""
        channels = [self.in_channels, self.features[0]] + self.features[1:] + [self.features[-1]] * self.num_res_blocks
        return [channels[p] for p in points]

    def forward(self, x, feature_points: Sequence[int] = (), encode_only: bool = False):
        if not feature_points:
            return self.model(x)
        features, last = [], max(feature_points)
        if 0 in feature_points:
            features.append(x)
        for k, layer in enumerate(self.model, start=1):
            if encode_only and k > last:
                return features
            x = layer(x)
            if k in feature_points:
                features.append(x)
        return features if encode_only else (x, features)


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


class PatchSampleMLP(nn.Module):
    """CUT's PatchSampleF: per feature layer, the same ``num_patches`` random locations in every image of the batch,
    a 2-layer MLP (``mlp_features`` units) and L2 normalisation. ``patch_ids`` from the keys' call are reused for the
    queries, so that query i and key i come from the same location of input and output."""

    def __init__(self, channels: Sequence[int], mlp_features: int = 256, num_patches: int = 256):
        super().__init__()
        self.num_patches = num_patches
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(c, mlp_features), nn.ReLU(inplace=True),
                                                 nn.Linear(mlp_features, mlp_features)) for c in channels])
        for m in self.mlps.modules():  # CUT initialises netF like the other networks (normal, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor] = None):
        samples, ids = [], []
        for i, (feat, mlp) in enumerate(zip(features, self.mlps)):
            flat = feat.flatten(2).transpose(1, 2)  # (B, locations, C)
            if patch_ids is None:
                idx = torch.randperm(flat.shape[1], device=feat.device)[:min(self.num_patches, flat.shape[1])]
            else:
                idx = patch_ids[i]
            sample = mlp(flat[:, idx].flatten(0, 1))  # (B * patches, mlp_features)
            samples.append(nn.functional.normalize(sample, dim=1))
            ids.append(idx)
        return samples, ids
