"""The epochs in which CMEDL_warmAfterOnset's hint was on, read from its checkpoints' logs (stop 22).

The gate (nnUNetTrainerCMEDL.hint_weight, hint_gate = 'teacher_ahead_after_onset') opens epoch e when, after epoch
e - 1, the teacher's validation pseudo-Dice on pMRI exceeds the student's on CT and the student's has passed 0.05 in
some epoch so far. Usage: python docs/benchmark/stop22/gate_epochs.py 'W/nnUNet_results/*/nnUNetTrainerCMEDL_warmAfterOnset_*/fold_0/checkpoint_final.pth'
"""
import glob
import sys

import numpy as np

from nnunet_cmedl.checkpoint_io import load_checkpoint

for pattern in sys.argv[1:]:
    for f in sorted(glob.glob(pattern)):
        log = load_checkpoint(f)['logging']
        student = np.array([np.nanmean(x) for x in log['dice_per_class_or_region']])
        teacher = np.array(log['cmedl_teacher_pseudo_dice_pmri'])
        gate = [e for e in range(1, len(teacher)) if teacher[e - 1] > student[e - 1] and (student[:e] > 0.05).any()]
        onset = next((i for i, v in enumerate(student) if v > 0.05), None)
        name = f.split('/')[-3].split('__')[0].replace('nnUNetTrainer', '')
        print(f"{name:40s} onset {onset}  hint on in {len(gate):2d} epochs: {gate}")
