"""Oracles, diagnostics of the hint (issue 8): CMEDL with a teacher chosen to know more than the student.

**The paired-MRI oracle**: CMEDL whose teacher segments each CT patient's own MRI.

No real dataset has a paired MRI (that is CMEDL's premise); the phantom does (``nnunet_cmedl paired-mri``). Here the
batches carry it as a last image channel, through nnU-Net's own data loading and augmentation (the spatial
transforms move both channels together, so the MRI stays aligned with the CT and the label), and the I2I method is
``paired_oracle`` (i2i/oracles.py), whose "generator" hands the teacher that channel. The student sees the CT
channel only and is a stock nnU-Net network, predicted as any other.

What it measures: with the best teacher the phantom allows, does the hint make a better student? If it does, the
generator (which does not render the tumours, docs/BENCHMARK.md) is what holds CMEDL back here; if it does not, the
hint itself passes on little.

Not a matched pair with plain nnU-Net at the same seed: nnU-Net's intensity augmentations draw their random numbers
per channel, so a second channel changes the student's batches. Compare runs, as with other seeds.

**The CT-teacher oracle** (``nnUNetTrainerCMEDL_ctTeacher*``): the teacher segments the CT itself (I2I stand-in
``no_translation``) and starts from a plain nnU-Net trained on 4x the labels (the benchmark's reference fold; the
warm start); the hint, as CMEDL's, on the last decoder features. The teacher's features are a function of the very
input the student sees, so the student can match them exactly, unlike those of a teacher on the true MRI: does the
hint pass on what a better teacher knows when nothing it knows is out of the student's reach? (FitNets' setting,
Romero et al. 2015.) The student's batches are plain nnU-Net's at the same seed (matched pairs); without the hint
its training would be plain nnU-Net's bit for bit on the CPU.
"""
from os.path import isfile, join

import numpy as np
import torch
from torch import nn

from nnunet_cmedl.distillation.hint import unwrap
from nnunet_cmedl.synthetic.paired_mri import paired_folder
from nnunet_cmedl.training.nnUNetTrainerCMEDL import TrainingStopped, nnUNetTrainerCMEDL


class ChannelStack:
    """Two (channels, *spatial) arrays as one along the channel axis, read lazily: nnU-Net's data loader crops a patch
    out of each case (acvl_utils' ``crop_and_pad_nd`` slices it), and only that patch of each part is read (blosc2
    and memory-mapped ``.npy`` read what a slice covers), not the whole case."""

    def __init__(self, *parts):
        if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise ValueError(f"channel stack: spatial shapes differ: {[tuple(p.shape) for p in parts]}")
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        if index and index[0] != slice(None):  # a channel selection: rare, read everything
            return np.asarray(self)[index]
        spatial = (slice(None),) + tuple(index[1:])
        return np.concatenate([np.asarray(p[spatial], dtype=np.float32) for p in self.parts])

    def __array__(self, dtype=None, copy=None):
        whole = self[(slice(None),)]
        return whole if dtype is None else whole.astype(dtype)


class WithPairedMRI:
    """An nnU-Net dataset whose cases carry their paired MRI (``<case>.npy`` in ``folder``) as a last channel."""

    def __init__(self, dataset, folder: str):
        self.dataset, self.folder = dataset, folder

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        mri = np.load(join(self.folder, identifier + '.npy'), mmap_mode='r')
        return ChannelStack(data, mri), seg, seg_prev, properties


class LeadingChannels(nn.Module):
    """``module(x[:, :n])``: the student on the CT channel(s) of a batch [CT, paired MRI]."""

    def __init__(self, module: nn.Module, n: int):
        super().__init__()
        self.module, self.n = module, n

    @property
    def decoder(self):  # nnU-Net reaches deep supervision through network.decoder
        return self.module.decoder

    def forward(self, x):
        return self.module(x[:, :self.n])


class nnUNetTrainerCMEDL_pairedOracle(nnUNetTrainerCMEDL):
    """CMEDL with the paired-MRI oracle in place of the I2I method (module docstring). Run ``nnunet_cmedl paired-mri
    -d D -c CONFIGURATION`` first."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.i2i_method = 'paired_oracle'

    def paired_mri_folder(self) -> str:
        return str(paired_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier))

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        folder = self.paired_mri_folder()
        missing = [c for c in dataset_tr.identifiers + dataset_val.identifiers if not isfile(join(folder, c + '.npy'))]
        if missing:
            raise TrainingStopped(
                f"{self.__class__.__name__}: {join(folder, missing[0] + '.npy')}: no paired MRI "
                f"({len(missing)} case(s) lack one); run nnunet_cmedl paired-mri -d {self.plans_manager.dataset_name} "
                f"-c {self.configuration_name} first")
        return WithPairedMRI(dataset_tr, folder), WithPairedMRI(dataset_val, folder)

    def build_feature_tap(self, network: nn.Module) -> nn.Module:
        tap = super().build_feature_tap(network)
        return LeadingChannels(tap, self.num_input_channels) if network is self.network else tap

    def validation_step(self, batch: dict) -> dict:
        student = self.network
        self.network = LeadingChannels(student, self.num_input_channels)  # the teacher's path takes both channels
        try:
            return super().validation_step(batch)
        finally:
            self.network = student


class nnUNetTrainerCMEDL_pairedOracleNoHint(nnUNetTrainerCMEDL_pairedOracle):
    """The oracle without the hint: its teacher, trained on the true MRI, is the warm start of the next variant."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.0


class nnUNetTrainerCMEDL_pairedOracleAfterOnset(nnUNetTrainerCMEDL_pairedOracle):
    """The oracle as ``CMEDL_warmAfterOnset`` runs CMEDL: the teacher warm-started from
    ``nnUNetTrainerCMEDL_pairedOracleNoHint`` (trained on the true MRI), the hint on once the student has begun to
    segment and while the teacher's validation pseudo-Dice is ahead of the student's (stop 22's best setting)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_gate = 'teacher_ahead_after_onset'
        self.warm_start = 'nnUNetTrainerCMEDL_pairedOracleNoHint'


class nnUNetTrainerCMEDL_pairedOracleTumourAfterOnset(nnUNetTrainerCMEDL_pairedOracleAfterOnset):
    """The oracle with the hint only on the tumour voxels the teacher segments correctly (hint_mask
    'teacher_correct_foreground', the mask of ``CMEDL_warmTumourAfterOnset``). Stop 24's oracle, hinted over every
    voxel, made its student worse; with a CT teacher this mask passed on a quarter of the lead (stop 26). With the
    best teacher a generator could give (the true MRI), does the only hint that has helped pass anything on?"""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct_foreground'


class nnUNetTrainerCMEDL_ctTeacher(nnUNetTrainerCMEDL):
    """CMEDL whose teacher is a second CT network, warm-started from plain nnU-Net (module docstring): set
    ``warm_start`` (and ``warm_start_fold``) to a plain nnU-Net run, e.g. one trained on more labels."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.i2i_method = 'no_translation'
        # the teacher takes the CT: its image channels (as nnU-Net's determine_num_input_channels counts them)
        self.mri_num_channels = len(dataset_json['modality' if 'modality' in dataset_json else 'channel_names'])

    def _load_teacher_and_i2i(self, checkpoint: dict, source: str) -> None:
        """The teacher from a plain nnU-Net checkpoint (``network_weights``); a CMEDL checkpoint as usual."""
        if 'cmedl_teacher_weights' in checkpoint or 'network_weights' not in checkpoint:
            return super()._load_teacher_and_i2i(checkpoint, source)
        try:
            unwrap(self.teacher).load_state_dict(checkpoint['network_weights'])
        except RuntimeError as e:
            raise TrainingStopped(f"{source}: its network does not fit this trainer's teacher (other plans or "
                                  f"configuration?): {str(e).splitlines()[0]}") from None


class nnUNetTrainerCMEDL_ctTeacherAfterOnset(nnUNetTrainerCMEDL_ctTeacher):
    """The CT-teacher oracle with the hint as ``CMEDL_warmAfterOnset`` gives it (on once the student has begun to
    segment, while the teacher's validation pseudo-Dice is ahead of the student's)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_gate = 'teacher_ahead_after_onset'


class nnUNetTrainerCMEDL_ctTeacherOutputsAfterOnset(nnUNetTrainerCMEDL_ctTeacherAfterOnset):
    """The same with the hint on the outputs (knowledge distillation, Hinton et al. 2015) instead of the features."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_target = 'outputs'


class nnUNetTrainerCMEDL_ctTeacherTumourAfterOnset(nnUNetTrainerCMEDL_ctTeacherAfterOnset):
    """The same with the feature hint only on the tumour voxels the teacher segments correctly (hint_mask
    'teacher_correct_foreground'): stop 25 found the hinted features 3x closer to the teacher's on the tumour voxels
    but 6x closer overall, the MSE over every voxel spent mostly on background. Does a hint aimed at the tumours pass
    on more of the teacher's lead?"""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct_foreground'


class nnUNetTrainerCMEDL_ctTeacherSameLabelsTumourAfterOnset(nnUNetTrainerCMEDL_ctTeacherTumourAfterOnset):
    """A control for CMEDL_longWarmTumourAfterOnset (stop 27), not an oracle: the same hint, mask and gate, with a CT
    teacher trained on the student's own labelled cases for as long as that method's pMRI teacher was pre-trained
    (the benchmark warm-starts it from plain nnU-Net on fold 0, 3600 iterations). Does the student gain from what the
    pMRI shows, or from distilling a teacher trained longer on the same labels?"""
