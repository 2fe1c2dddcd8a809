"""The paired-MRI oracle: CMEDL whose teacher segments each CT patient's own MRI (a diagnostic, issue 8).

No real dataset has a paired MRI (that is CMEDL's premise); the phantom does (``nnunet_cmedl paired-mri``). Here the
batches carry it as a last image channel, through nnU-Net's own data loading and augmentation (the spatial
transforms move both channels together, so the MRI stays aligned with the CT and the label), and the I2I method is
``paired_oracle`` (i2i/paired_oracle.py), whose "generator" hands the teacher that channel. The student sees the CT
channel only and is a stock nnU-Net network, predicted as any other.

What it measures: with the best teacher the phantom allows, does the hint make a better student? If it does, the
generator (which does not render the tumours, docs/BENCHMARK.md) is what holds CMEDL back here; if it does not, the
hint itself passes on little.

Not a matched pair with plain nnU-Net at the same seed: nnU-Net's intensity augmentations draw their random numbers
per channel, so a second channel changes the student's batches. Compare runs, as with other seeds.
"""
from os.path import isfile, join

import numpy as np
import torch
from torch import nn

from nnunet_cmedl.synthetic.paired_mri import paired_folder
from nnunet_cmedl.training.nnUNetTrainerCMEDL import TrainingStopped, nnUNetTrainerCMEDL


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
        mri = np.load(join(self.folder, identifier + '.npy'))
        return np.concatenate([np.asarray(data[:], dtype=np.float32), mri]), seg, seg_prev, properties


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
