"""CMEDL's hint (feature-distillation) loss and the forward hooks that read decoder features.

The student's features on CT are pulled toward the teacher's features on the matching pseudo-MRI at the last
decoder stages (the highest-resolution ones, just before the segmentation head). Hooks leave the networks and their
state dicts exactly as nnU-Net builds them, so stock inference loads the student unchanged.
"""
from contextlib import contextmanager
from typing import List, Sequence

import torch
from torch import nn
from torch._dynamo import OptimizedModule


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def decoder_stages(network: nn.Module) -> nn.ModuleList:
    """``decoder.stages`` of dynamic-network-architectures' U-Nets (PlainConvUNet, ResidualEncoderUNet, ...), which
    run from the lowest to the highest resolution."""
    net = unwrap(network)
    stages = getattr(getattr(net, "decoder", None), "stages", None)
    if stages is None:
        raise TypeError(f"{type(net).__name__} has no decoder.stages; the hint loss needs a "
                        f"dynamic-network-architectures U-Net (or override nnUNetTrainerCMEDL.hint_layers)")
    return stages


def resolve_stage_indices(num_stages: int, indices: Sequence[int]) -> List[int]:
    """Negative indices count from the highest-resolution stage (-1 = last decoder stage) for any depth."""
    if not indices or any(not -num_stages <= i < num_stages for i in indices):
        raise ValueError(f"hint decoder stages {tuple(indices)} out of range for a decoder with {num_stages} stages")
    return sorted({i % num_stages for i in indices})


class FeatureRecorder:
    """Forward hooks on given layers that record their outputs, only inside ``with recorder.recording():``."""

    def __init__(self, layers: Sequence[nn.Module]):
        self._features: List[torch.Tensor] = []
        self._active = False
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, module, inputs, output):
        if self._active:
            self._features.append(output)

    @contextmanager
    def recording(self):
        self._features, self._active = [], True
        try:
            yield self._features
        finally:
            self._active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def hint_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
              detach_teacher: bool = True) -> torch.Tensor:
    """Mean over layers of the mean squared difference (L2 hint, Romero et al.'s FitNets; CMEDL's L_hint).

    With ``detach_teacher`` the hint moves only the student (the informative MRI teacher teaches; CMEDL's default).
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise RuntimeError(f"hint loss needs matching feature lists, got {len(student_features)} student and "
                           f"{len(teacher_features)} teacher tensors")
    terms = [nn.functional.mse_loss(s.float(), (t.detach() if detach_teacher else t).float())
             for s, t in zip(student_features, teacher_features)]
    return torch.stack(terms).mean()
