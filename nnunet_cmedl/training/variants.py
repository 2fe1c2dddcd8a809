"""Short variants of nnUNetTrainerCMEDL, named like nnU-Net's own (each changes one thing).

Budget variants exist for plain nnU-Net too, so that a comparison gives both methods the same budget.
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cmedl.training.experiment import ExperimentMixin
from nnunet_cmedl.training.nnUNetTrainerCMEDL import nnUNetTrainerCMEDL
from nnunet_cmedl.training.strategies import nnUNetTrainerCTPseudoMRI, nnUNetTrainerPseudoMRI


class nnUNetTrainerCMEDL_5epochs(nnUNetTrainerCMEDL):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerCMEDL_CUT(nnUNetTrainerCMEDL):
    """CMEDL with CUT as the I2I method (the paper's second one): lambda_NCE 1 with the NCE identity term."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.i2i_method = 'cut'


class nnUNetTrainerCMEDL_FastCUT(nnUNetTrainerCMEDL_CUT):
    """CMEDL with FastCUT: lambda_NCE 10, no NCE identity term (one generator pass plus one encoder half)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_nce = 10.0
        self.nce_identity = False


class nnUNetTrainerCMEDL_stridedStem(nnUNetTrainerCMEDL):
    """Generators one resolution stage lower: strided first conv, transposed conv back (i2i/networks.py)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.generator_strided_stem = True


class nnUNetTrainerCMEDL_identity(nnUNetTrainerCMEDL):
    """CycleGAN's identity terms on (0.5 x lambda_cycle, 6 generator passes per iteration instead of 4)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_identity = 0.5


class nnUNetTrainerCMEDL_hintBothWays(nnUNetTrainerCMEDL):
    """The hint also moves the teacher toward the student (the paper's default keeps the teacher detached); since the
    teacher, generator and student share one backward, it also reaches the generator through the pseudo-MRI."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_detach_teacher = False


class nnUNetTrainerCMEDL_noHint(nnUNetTrainerCMEDL):
    """Ablation: everything trained as in CMEDL, but no distillation into the student."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.0


class TinyCMEDLMixin:
    """Small I2I networks and a handful of iterations: CPU tests and smoke runs."""
    tiny_generator = dict(generator_features=4, generator_res_blocks=1)

    def make_tiny(self):
        self.num_epochs = 2
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        for name, value in self.tiny_generator.items():
            setattr(self, name, value)
        self.discriminator_features = 4
        self.discriminator_layers = 2
        self.image_pool_size = 4
        self.nce_patches = 16
        self.nce_mlp_features = 8
        self.save_snapshot_every = 1
        self.save_every = 1


class nnUNetTrainerCMEDL_tinyCPU(TinyCMEDLMixin, nnUNetTrainerCMEDL):
    """For tests: 2 epochs of 2 iterations with tiny I2I networks. Pair it with a small configuration in the plans
    (``nnunet_cmedl add-small-config``) so that the segmentation networks are small too."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.make_tiny()


class nnUNetTrainerCMEDL_CUT_tinyCPU(TinyCMEDLMixin, nnUNetTrainerCMEDL_CUT):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.make_tiny()


class nnUNetTrainerCMEDL_FastCUT_tinyCPU(TinyCMEDLMixin, nnUNetTrainerCMEDL_FastCUT):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.make_tiny()


class nnUNetTrainerPseudoMRI_tinyCPU(TinyCMEDLMixin, nnUNetTrainerPseudoMRI):
    generator_settings = {**nnUNetTrainerPseudoMRI.generator_settings, **TinyCMEDLMixin.tiny_generator}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.make_tiny()


class nnUNetTrainerCTPseudoMRI_tinyCPU(TinyCMEDLMixin, nnUNetTrainerCTPseudoMRI):
    generator_settings = {**nnUNetTrainerCTPseudoMRI.generator_settings, **TinyCMEDLMixin.tiny_generator}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.make_tiny()


class nnUNetTrainer_tinyCPU(nnUNetTrainer):
    """Plain nnU-Net with the budget of nnUNetTrainerCMEDL_tinyCPU."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 2, 1


class CPUBudgetMixin:
    """The budget of the README's demo and the CPU benchmark: the same for plain nnU-Net and CMEDL."""
    budget_epochs = 40
    budget_iterations_per_epoch = 30
    budget_val_iterations_per_epoch = 4

    def apply_budget(self):
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.budget_val_iterations_per_epoch
        self.save_every = 5


class CMEDLCPUBudgetMixin(CPUBudgetMixin):
    def apply_budget(self):
        super().apply_budget()
        self.generator_features = 16  # the CPU budget cannot afford CycleGAN-sized generators
        self.generator_res_blocks = 3
        self.discriminator_features = 32
        self.save_snapshot_every = 10


class nnUNetTrainerCMEDL_cpuBudget(CMEDLCPUBudgetMixin, nnUNetTrainerCMEDL):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget()


class nnUNetTrainerCMEDL_CUT_cpuBudget(CMEDLCPUBudgetMixin, nnUNetTrainerCMEDL_CUT):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget()


class nnUNetTrainerCMEDL_FastCUT_cpuBudget(CMEDLCPUBudgetMixin, nnUNetTrainerCMEDL_FastCUT):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget()


class nnUNetTrainerCMEDL_identity_cpuBudget(nnUNetTrainerCMEDL_cpuBudget):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_identity = 0.5


class nnUNetTrainerCMEDL_stridedStem_cpuBudget(nnUNetTrainerCMEDL_cpuBudget):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.generator_strided_stem = True


class nnUNetTrainer_cpuBudget(CPUBudgetMixin, nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.apply_budget()


class nnUNetTrainerCMEDL_noHint_cpuBudget(nnUNetTrainerCMEDL_cpuBudget):
    """Ablation at the CPU budget: CMEDL without the hint (the student then learns exactly like plain nnU-Net, while
    the rest of CMEDL trains beside it)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.0


class nnUNetTrainerCMEDL_100epochs(nnUNetTrainerCMEDL):
    """GPU-sized benchmark budget, like nnU-Net's nnUNetTrainer_100epochs."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100


class nnUNetTrainerCMEDL_noHint_100epochs(nnUNetTrainerCMEDL_100epochs):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.0


# ---- the accuracy issue's method choices (each one attribute; docs/BENCHMARK.md has their measured effect)
class nnUNetTrainerCMEDL_hintWarmup(nnUNetTrainerCMEDL):
    """lambda_hint ramps linearly from 0 over the first third of training: no pull toward an untrained teacher."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_warmup_epochs = max(1, self.num_epochs // 3)

    def hint_weight(self, epoch: int) -> float:
        self.hint_warmup_epochs = max(1, self.num_epochs // 3)  # follows budget variants that change num_epochs
        return super().hint_weight(epoch)


class nnUNetTrainerCMEDL_teacherAhead(nnUNetTrainerCMEDL):
    """The hint only in epochs after a validation where the teacher's pseudo-Dice on pMRI beat the student's."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_gate = 'teacher_ahead'


class nnUNetTrainerCMEDL_tseg5(nnUNetTrainerCMEDL):
    """The teacher's segmentation loss on pMRI drives the generator with weight 5 (the authors' PSIGAN code)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_teacher_seg_on_generator = 5.0


class nnUNetTrainerCMEDL_teacherAdamW(nnUNetTrainerCMEDL):
    """The teacher trained with nnU-Net's nnUNetTrainerAdam1en3 setting (AdamW, amsgrad, lr 1e-3, PolyLR) instead of
    the student's SGD at 1e-2: a teacher that may learn the pMRI faster in a short run (issue 8, section 2)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher_optimizer = 'adamw'
        self.teacher_initial_lr = 1e-3


class nnUNetTrainerCMEDL_hintNorm(nnUNetTrainerCMEDL):
    """The hint on per-channel standardised features: every stage and channel counts alike."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_normalisation = 'channel'


class nnUNetTrainerCMEDL_hintDeepStages(nnUNetTrainerCMEDL):
    """The hint on the two decoder stages below CMEDL's last two (a quarter and an eighth of the resolution where each
    stage halves it): features that carry what the network recognises more than where its borders lie (issue 8,
    section 2: which stages; stop 39)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_decoder_stages = (-4, -3)


class nnUNetTrainerCMEDL_hintLastStage(nnUNetTrainerCMEDL):
    """The hint on the last decoder stage alone (full resolution), the one the segmentation head reads."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_decoder_stages = (-1,)


class nnUNetTrainerCMEDL_lambdaHint0p3(nnUNetTrainerCMEDL):
    """The hint weighted 0.3 instead of CMEDL's 1, everything else as published (issue 8, section 2: hint scale;
    stop 40's dose-response, with 0 = nnUNetTrainerCMEDL_noHint, whose student is plain nnU-Net's)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.3


class nnUNetTrainerCMEDL_lambdaHint0p1(nnUNetTrainerCMEDL):
    """The hint weighted 0.1 instead of CMEDL's 1 (stop 40's dose-response)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lambda_hint = 0.1


class nnUNetTrainerCMEDL_teacherAheadMasked(nnUNetTrainerCMEDL_teacherAhead):
    """teacherAhead, and the hint only on the voxels the teacher segments correctly (issue 8, stop 19: at the CPU
    budget the teacher on pMRI misses most easy tumours, and the hint toward it cost the student the easy ones)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct'


class nnUNetTrainerCMEDL_teacherAheadWarm(nnUNetTrainerCMEDL_teacherAhead):
    """teacherAhead whose I2I networks and teacher start where a CMEDL_noHint run of the same dataset, plans,
    configuration and fold ended (pre-training; ``warm_start``), so that the teacher on pMRI is ahead of the fresh
    student from the first epochs: the paper's premise, which training everything from scratch did not reach at the
    CPU budget (issue 8, docs/BENCHMARK.md "Update, stop 19"). Train nnUNetTrainerCMEDL_noHint first."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warm_start = 'nnUNetTrainerCMEDL_noHint'


class nnUNetTrainerCMEDL_warmMasked(nnUNetTrainerCMEDL_teacherAheadWarm):
    """teacherAheadWarm with the hint only on the voxels the teacher segments correctly (issue 8, stop 20: the warm
    teacher on pMRI beats its student on hard tumours and misses easy ones, and the unmasked hint carried the miss)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct'


class nnUNetTrainerCMEDL_warmTumourMasked(nnUNetTrainerCMEDL_teacherAheadWarm):
    """teacherAheadWarm with the hint only on the tumour voxels the teacher segments correctly (stop 20: the unmasked
    hint fell to a fifth of its start, matched mostly on background, while the student still found no tumour)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct_foreground'


class nnUNetTrainerCMEDL_warmOutputHint(nnUNetTrainerCMEDL_warmMasked):
    """warmMasked with the hint on the outputs: where the warm teacher segments the pMRI correctly, the student's
    segmentation of the CT is pulled toward the teacher's soft segmentation (knowledge distillation) instead of its
    decoder features toward the teacher's (issue 8, stop 21)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_target = 'outputs'


class nnUNetTrainerCMEDL_warmAfterOnset(nnUNetTrainerCMEDL_teacherAheadWarm):
    """teacherAheadWarm whose hint waits until the student has begun to segment (validation pseudo-Dice above 0.05):
    in stop 21 every warm hint delayed that onset, and the student never caught up (issue 8)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_gate = 'teacher_ahead_after_onset'


class nnUNetTrainerCMEDL_warmTumourAfterOnset(nnUNetTrainerCMEDL_warmAfterOnset):
    """warmAfterOnset with the hint only on the tumour voxels the teacher segments correctly: the best CMEDL setting
    measured here (issue 8, stop 27: from a pre-training 3x as long as the student's training, hard tumours +0.069
    over 10 seeds; stops 28-29: with the student trained as long as the pre-training, hard -0.049 against plain
    nnU-Net trained as long, 5 of 5 seeds worse). Two steps: train nnUNetTrainerCMEDL_noHint (the generator and the
    teacher on pMRI), then this."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.hint_mask = 'teacher_correct_foreground'


class nnUNetTrainer_reseedAt20(ExperimentMixin, nnUNetTrainer):
    """Plain nnU-Net whose random streams are reseeded at the start of epoch 20 (of the benchmark's 40): the control
    for a matched pair, whose runs part where CMEDL's hint gate first opens (epochs 13-22 at the cpu budget)."""
    reseed_at_epoch = 20
