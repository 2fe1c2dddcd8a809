"""CMEDL's hint (feature-distillation) loss and the feature tap that reads decoder features.

The student's features on CT are pulled toward the teacher's features on the matching pseudo-MRI at the last
decoder stages (the highest-resolution ones, just before the segmentation head). The tap leaves the networks and
their state dicts exactly as nnU-Net builds them, so stock inference loads the student unchanged.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_cmedl.errors import UnsupportedSetup

HINT_GATES = ('always', 'teacher_ahead', 'teacher_ahead_after_onset')
HINT_ONSET_DICE = 0.05  # the student's validation pseudo-Dice that counts as its onset (nnUNetTrainerCMEDL)


def hint_gate_open(gate: str, teacher: Sequence[float], student: Sequence[float], onset_dice: float) -> bool:
    """Whether the hint gate ``gate`` lets the hint through in the epoch after these validations.

    ``teacher`` and ``student`` are the validation pseudo-Dice so far, one value per epoch, oldest first (the teacher
    on its input, pMRI; the student on CT, mean over the foreground classes). 'always': open. 'teacher_ahead': open
    while the teacher's last value is above the student's. 'teacher_ahead_after_onset': that, once the student has
    passed ``onset_dice`` at some validation (it has begun to segment). Before any validation a gate is shut.
    """
    if gate not in HINT_GATES:
        raise ValueError(f"hint_gate {gate!r}: expected one of {', '.join(map(repr, HINT_GATES))}")
    if gate == 'always':
        return True
    if not len(teacher) or not len(student) or not np.isfinite(teacher[-1]) or not teacher[-1] > student[-1]:
        return False
    return gate == 'teacher_ahead' or any(d > onset_dice for d in student)


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def resolve_stage_indices(num_stages: int, indices: Sequence[int]) -> List[int]:
    """Negative indices count from the highest-resolution stage (-1 = last decoder stage) for any depth. Indices the
    decoder does not have stop the trainer with one line (``UnsupportedSetup``)."""
    if not indices or any(not -num_stages <= i < num_stages for i in indices):
        raise UnsupportedSetup(f"hint_decoder_stages {tuple(indices)}: this network's decoder has {num_stages} stages "
                               f"(indices {-num_stages} to {num_stages - 1}); choose stages it has")
    return sorted({i % num_stages for i in indices})


# what DecoderFeatureTap walks: dynamic-network-architectures' U-Nets (PlainConvUNet, ResidualEncoderUNet, ResidualUNet)
DECODER_LAYOUT = ("encoder", "decoder", "decoder.stages", "decoder.transpconvs", "decoder.seg_layers",
                  "decoder.deep_supervision")


def check_decoder_layout(network: nn.Module) -> None:
    """Raise ``UnsupportedSetup`` (one line, naming the network class and what it lacks) unless ``network`` has the
    decoder layout the hint's feature tap walks."""
    missing = [path for path in DECODER_LAYOUT if _lacks(network, path)]
    if not missing:
        decoder = network.decoder
        lengths = {name: len(getattr(decoder, name)) for name in ("stages", "transpconvs", "seg_layers")}
        if len(set(lengths.values())) == 1:
            return
        missing = ["one transposed conv and one segmentation layer per decoder stage (decoder " + ", ".join(
            f"{name}: {n}" for name, n in lengths.items()) + ")"]
    cls = type(network)
    raise UnsupportedSetup(
        f"network {cls.__module__}.{cls.__qualname__} has no {', '.join(missing)}: CMEDL's hint taps the last "
        f"decoder stages of a dynamic-network-architectures U-Net (encoder, then decoder.transpconvs, "
        f"decoder.stages and decoder.seg_layers: PlainConvUNet, ResidualEncoderUNet, ResidualUNet). Set one of "
        f"these as architecture.network_class_name in the plans, or override build_feature_tap in a trainer "
        f"subclass")


def _lacks(obj, path: str) -> bool:
    for name in path.split("."):
        if not hasattr(obj, name):
            return True
        obj = getattr(obj, name)
    return False


class DecoderFeatureTap(nn.Module):
    """The U-Net's own forward (encoder, then decoder) that also returns the outputs of chosen decoder stages:
    ``tap(x) -> (network output, [features])``.

    The features are return values, so the capture works however the network was built, compiled or wrapped (forward
    hooks are silently skipped by torch.compile once dynamo has traced a module, pytorch issue 117758). The decoder
    walk is the one of dynamic-network-architectures' ``UNetDecoder`` / ``UNetResDecoder`` (PlainConvUNet,
    ResidualEncoderUNet, ResidualUNet); a test checks that the output equals ``network(x)`` exactly. The tap shares
    the network's parameters and is never saved: checkpoints hold the network itself.
    """

    def __init__(self, network: nn.Module, stage_indices: Sequence[int]):
        super().__init__()
        net = unwrap(network)
        check_decoder_layout(net)
        self.network = net
        self.stage_indices = tuple(resolve_stage_indices(len(net.decoder.stages), stage_indices))

    def forward(self, x):
        net = self.network
        decoder = net.decoder
        skips = net.encoder(x)
        lres_input, seg_outputs, features = skips[-1], [], []
        for s in range(len(decoder.stages)):
            x = decoder.transpconvs[s](lres_input)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = decoder.stages[s](x)
            if s in self.stage_indices:
                features.append(x)
            if decoder.deep_supervision:
                seg_outputs.append(decoder.seg_layers[s](x))
            elif s == len(decoder.stages) - 1:
                seg_outputs.append(decoder.seg_layers[-1](x))
            lres_input = x
        seg_outputs = seg_outputs[::-1]
        return (seg_outputs if decoder.deep_supervision else seg_outputs[0]), features


HINT_NORMALISATIONS = ("none", "channel")


def _normalised(features: torch.Tensor, normalisation: str) -> torch.Tensor:
    features = features.float()
    if normalisation == "channel":  # zero mean, unit variance per sample and channel, over space
        return nn.functional.instance_norm(features, eps=1e-5)
    return features


HINT_MASKS = ("none", "teacher_correct", "teacher_correct_foreground")


def teacher_correct_mask(output, target, has_regions: bool = False, foreground_only: bool = False,
                         has_ignore_label: bool = False) -> torch.Tensor:
    """1 where the teacher's segmentation (of the highest-resolution output) equals the label, else 0: ``(B, 1, ...)``.

    Labels: the argmax class equals the target (nnU-Net's ignore label never does: no output channel has it).
    Regions: every region's sigmoid > 0.5 agrees with the target; with ``has_ignore_label`` the target carries one
    channel more than the output, the ignore mask last (nnU-Net's ConvertSegmentationToRegionsTransform), and ignored
    voxels are never correct. ``foreground_only``: only where, in addition, the label is foreground (a class other
    than background; regions: any region), i.e. the tumour voxels the teacher finds. The mask carries no gradient."""
    output = output[0] if isinstance(output, (list, tuple)) else output
    target = target[0] if isinstance(target, (list, tuple)) else target
    with torch.no_grad():
        if has_regions:
            ignored = None
            if has_ignore_label:
                target, ignored = target[:, :-1], target[:, -1:] > 0.5
            if target.shape[1] != output.shape[1]:
                raise ValueError(f"teacher_correct_mask: {output.shape[1]} region outputs but {target.shape[1]} "
                                 f"target regions (has_ignore_label={has_ignore_label})")
            correct = ((output > 0) == (target > 0.5)).all(1, keepdim=True)
            if ignored is not None:
                correct &= ~ignored
        else:
            correct = output.argmax(1, keepdim=True) == target.long()
        if foreground_only:
            correct &= (target > 0.5).any(1, keepdim=True) if has_regions else target.long() > 0
    return correct.float()


def hint_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
              detach_teacher: bool = True, normalisation: str = "none",
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over layers of the mean squared difference (L2 hint, Romero et al.'s FitNets; CMEDL's L_hint).

    With ``detach_teacher`` the hint moves only the student (the informative MRI teacher teaches; CMEDL's default).
    ``normalisation='channel'`` standardises each feature map per sample and channel before the difference, so
    that every stage and channel counts alike whatever its magnitude (CMEDL: 'none'). ``mask`` ``(B, 1, ...)`` at the
    input's resolution (e.g. ``teacher_correct_mask``) restricts the mean to the voxels where it is 1, resized to
    each layer by nearest neighbour (CMEDL: none, every voxel).
    """
    if normalisation not in HINT_NORMALISATIONS:
        raise ValueError(f"hint normalisation {normalisation!r}: expected one of {', '.join(HINT_NORMALISATIONS)}")
    if len(student_features) != len(teacher_features) or not student_features:
        raise RuntimeError(f"hint loss needs matching feature lists, got {len(student_features)} student and "
                           f"{len(teacher_features)} teacher tensors")
    terms = []
    for s, t in zip(student_features, teacher_features):
        s, t = _normalised(s, normalisation), _normalised(t.detach() if detach_teacher else t, normalisation)
        if mask is None:
            terms.append(nn.functional.mse_loss(s, t))
        else:
            m = nn.functional.interpolate(mask.float(), size=s.shape[2:], mode="nearest")
            terms.append(((s - t) ** 2 * m).sum() / (m.sum() * s.shape[1]).clamp(min=1))
    return torch.stack(terms).mean()


HINT_TARGETS = ("features", "outputs")


def output_hint_loss(student_output, teacher_output, temperature: float = 2.0, has_regions: bool = False,
                     detach_teacher: bool = True, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Knowledge distillation on the segmentation outputs (Hinton et al. 2015): the KL divergence from the teacher's
    to the student's class probabilities, both softened by ``temperature``, times ``temperature ** 2`` (so that the
    gradient's scale does not depend on it), averaged over the voxels of ``mask`` ``(B, 1, ...)`` (None: every voxel).
    Highest-resolution outputs only (deep supervision's first). Labels: softmax over classes; regions: a sigmoid per
    region (binary KL summed over regions). Not in CMEDL, whose hint is on decoder features."""
    s = student_output[0] if isinstance(student_output, (list, tuple)) else student_output
    t = teacher_output[0] if isinstance(teacher_output, (list, tuple)) else teacher_output
    s, t = s.float() / temperature, (t.detach() if detach_teacher else t).float() / temperature
    if has_regions:
        p_t = torch.sigmoid(t)
        kl = (p_t * (nn.functional.logsigmoid(t) - nn.functional.logsigmoid(s))
              + (1 - p_t) * (nn.functional.logsigmoid(-t) - nn.functional.logsigmoid(-s))).sum(1, keepdim=True)
    else:
        log_t, log_s = torch.log_softmax(t, 1), torch.log_softmax(s, 1)
        kl = (log_t.exp() * (log_t - log_s)).sum(1, keepdim=True)
    kl = kl * temperature ** 2
    if mask is None:
        return kl.mean()
    m = nn.functional.interpolate(mask.float(), size=kl.shape[2:], mode="nearest")
    return (kl * m).sum() / m.sum().clamp(min=1)
