"""nnUNetTrainerCMEDL: unpaired cross-modality educed distillation (Jiang et al., IEEE TMI 2022) in nnU-Net v2.

Every iteration trains, together and from scratch:
  1. the unpaired I2I method CT -> pseudo-MRI (pMRI): CycleGAN (default) or CUT (``i2i_method``), whose generator
     also gets the teacher's segmentation loss on pMRI (which keeps tumours where they are);
  2. its discriminator(s);
  3. the teacher: nnU-Net's network on pMRI, trained with the CT labels;
  4. the student: nnU-Net's network on CT (``self.network``), plus the hint loss pulling its last decoder features
     toward the teacher's features on the matching pMRI.
Generators, teacher and student share one forward and one backward of CMEDL's loss sum; the discriminators follow
in a step of their own. Only the student is needed for inference: ``network_weights`` in the checkpoint is exactly a
stock nnU-Net network.

The code names the modalities as the paper does (CT labelled, MRI unpaired, pMRI translated). The labelled modality
may be MRI with unpaired CT ("weak teacher" in the paper's later version): the same trainer, with the unpaired CT
preprocessed by ``nnunet_cmedl preprocess-unpaired --modality CT``; read ``ct`` as the labelled image and ``mri`` /
``pseudo_mri`` as the unpaired / translated one. Logs and figures name the modalities of the run.
"""
import functools
import os
from os.path import dirname, isfile, join
from typing import List

import numpy as np
import torch
from torch import autocast, nn
from torch.amp import GradScaler

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

from mri_unpaired.loader import find_unpaired_folder, get_unpaired_dataloader
from nnunet_cmedl.checkpoint_io import load_checkpoint
from nnunet_cmedl.distillation.hint import (HINT_MASKS, HINT_ONSET_DICE, HINT_TARGETS, DecoderFeatureTap,
                                           hint_gate_open, hint_loss, output_hint_loss, teacher_correct_mask, unwrap)
from nnunet_cmedl.distillation.teacher import SegmenterOnTranslated, scale_gradient
from nnunet_cmedl.i2i import I2I_METHODS, build_i2i
from nnunet_cmedl.i2i.cascade import previous_stage_channels
from nnunet_cmedl.i2i.networks import I2IArchitecture
from nnunet_cmedl.training import figures
from nnunet_cmedl.training.ddp import TrainingPass, all_ranks_agree, gather_from_all_ranks, rank_seed, wrap_in_ddp
from nnunet_cmedl.training.experiment import (RNG_KEY, RNG_PER_RANK_KEY, ExperimentMixin, RandomStreams,
                                               every_ranks_random_state, global_random_state, worker_seeds)
from nnunet_cmedl.training.lr_schedulers import constant_then_linear_decay, set_epoch
from mri_unpaired.atomic import atomic_path, remove_stale_temps

# per-iteration losses returned by train_step and logged once per epoch (key in nnU-Net's logger: 'cmedl_' + name);
# each I2I method logs its own generator terms ('G_' + name, see I2I_METHODS[...].loss_names)
TRAIN_LOSS_NAMES = ("G_adversarial", "G_cycle", "G_identity", "G_nce", "G_nce_identity", "D", "teacher_seg",
                    "student_seg", "hint")
SEGMENTATION_LOSS_NAMES = TRAIN_LOSS_NAMES[-4:]
VAL_LOG_NAMES = ("teacher_val_loss", "teacher_pseudo_dice_pmri")
# networks with an optimizer; 'cmedl_nonfinite_skips_' + name logs how many of an epoch's steps each skipped
NETWORKS = ("generators", "teacher", "student", "discriminators")


def draws_from_cmedl_random_streams(method):
    """The trainer's method draws random numbers from CMEDL's own streams (``trainer.cmedl_random``), not from the
    global ones that nnU-Net's batches come from."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with self.cmedl_random.active():
            return method(self, *args, **kwargs)
    return wrapped


class TrainingStopped(SystemExit):
    """Training cannot go on (the message says why): the stock CLI prints the message, no traceback, exit code 1."""


class nnUNetTrainerCMEDL(ExperimentMixin, nnUNetTrainer):
    optimized_networks = NETWORKS  # names of the networks that have an optimiser (logged skips, see _optimize)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # ---- CMEDL hyperparameters (where each default comes from) ----
        self.i2i_method = 'cyclegan'             # CMEDL paper: CycleGAN or CUT (nnUNetTrainerCMEDL_CUT/_FastCUT)
        self.lambda_adversarial = 1.0            # CycleGAN/CUT: adversarial terms weighted 1
        self.lambda_cycle = 10.0                 # CycleGAN's lambda for the L1 cycle loss
        # CycleGAN's identity term (0.5 x lambda_cycle when on) is off: it preserves intensities across domains
        # (CycleGAN used it for photo<->painting colours), which CT -> MRI must not do, and it costs 2 of 6
        # generator passes (H200, 3d_fullres: 7.2x -> 6.1x a plain nnU-Net iteration, docs/performance.md)
        self.lambda_identity = 0.0
        self.lambda_nce = 1.0                    # CUT: lambda_NCE 1 (FastCUT: 10)
        self.nce_identity = True                 # CUT: NCE identity term on real MRI (FastCUT: off)
        self.nce_patches = 256                   # CUT: 256 patches per layer
        self.nce_mlp_features = 256              # CUT: 2-layer MLP heads, 256 units
        self.nce_temperature = 0.07              # CUT: nce_T 0.07
        self.lambda_teacher_seg_on_generator = 1.0  # PSIGAN/CMEDL code: the teacher's seg loss on pMRI drives G too
        self.lambda_hint = 1.0                   # CMEDL: hint loss added to the student's loss with weight 1
        self.hint_decoder_stages = (-2, -1)      # CMEDL: the last two (highest-resolution) decoder stages
        self.hint_detach_teacher = True          # CMEDL: the informative teacher teaches, the hint moves the student
        # When the hint starts (issue 8: a hint toward an untrained teacher delays the student). warm-up: lambda_hint
        # ramps linearly from 0 over this many epochs (0: full weight from the start, as in CMEDL's code);
        # 'teacher_ahead': the hint is on only in epochs after a validation in which the teacher's pseudo-Dice on
        # pMRI exceeded the student's on CT ('always': CMEDL); 'teacher_ahead_after_onset': the same, and only once the
        # student has begun to segment (a validation pseudo-Dice above hint_onset_dice in some epoch so far): with a
        # warm teacher the hint delayed the student's first segmentations by 2-12 epochs (issue 8, stop 21)
        self.hint_warmup_epochs = 0
        self.hint_gate = 'always'
        self.hint_onset_dice = HINT_ONSET_DICE
        self._hint_weight_cache = (None, None)   # epoch_hint_weight: (its inputs, the weight)
        # 'none': MSE of the raw features (CMEDL); 'channel': each feature map standardised per sample and channel
        # over space first (instance norm without affine), so the hint matches patterns, not magnitudes
        self.hint_normalisation = 'none'
        # 'none': every voxel (CMEDL); 'teacher_correct': only where the teacher's segmentation of the pMRI equals the
        # label, so that a teacher that misses a tumour (e.g. one the generator has not yet learned to render) does
        # not pull the student's features there (issue 8, docs/BENCHMARK.md "Update, stop 19");
        # 'teacher_correct_foreground': only the tumour (foreground) voxels the teacher segments correctly, so that the
        # hint is not spent on background, which is most voxels and which the student gets right early anyway
        # (issue 8, stop 21)
        self.hint_mask = 'none'
        # what the hint pulls: 'features' (CMEDL: the student's decoder features toward the teacher's); 'outputs': the
        # student's segmentation toward the teacher's soft segmentation of the pMRI (knowledge distillation, Hinton et
        # al. 2015; issue 8, stop 21: features matched to a fifth of their distance did not move the student's head),
        # softened by output_hint_temperature (Hinton et al.: 2-20; 2 for two classes)
        self.hint_target = 'features'
        self.output_hint_temperature = 2.0
        # Warm start (issue 8, docs/BENCHMARK.md "Update, stop 20"): the I2I networks (generators, discriminators)
        # and the teacher start from another CMEDL run's checkpoint, so that the hint pulls the student toward a
        # teacher that already knows something; the student, every optimiser and every schedule start fresh. A path to
        # a checkpoint, or the name of a CMEDL trainer whose run of the same dataset, plans, configuration and fold
        # holds a checkpoint_final.pth (e.g. 'nnUNetTrainerCMEDL_noHint': pre-training). None: everything from scratch
        # (CMEDL). The stock CLI sets it with the environment variable nnUNet_cmedl_warm_start
        self.warm_start = os.environ.get('nnUNet_cmedl_warm_start') or None
        self.warm_start_fold = None              # the fold of the trainer that warm_start names (None: this run's)
        self.teacher_initial_lr = None           # None: nnU-Net's initial_lr, like the student (CMEDL: same optimiser)
        # 'sgd': nnU-Net's SGD (momentum 0.99, Nesterov), like the student; 'adamw': nnU-Net's nnUNetTrainerAdam
        # (AdamW, amsgrad, nnU-Net's weight decay; nnUNetTrainerAdam1en3 uses lr 1e-3). PolyLR either way (issue 8:
        # the teacher's optimiser and learning rate, _teacherAdamW)
        self.teacher_optimizer = 'sgd'
        self.gan_initial_lr = 2e-4               # CycleGAN/CUT: Adam, lr 2e-4, betas (0.5, 0.999)
        self.gan_betas = (0.5, 0.999)
        self.gan_constant_lr_fraction = 0.5      # CycleGAN: constant lr for half the epochs, then linear decay to 0
        self.image_pool_size = 50                # CycleGAN: history of 50 generated images for the discriminators
        self.generator_features = 32             # CycleGAN: ngf 64; halved so that 3d configurations fit
        self.generator_downsamplings = 2         # CycleGAN: 2
        self.generator_res_blocks = 6            # CycleGAN: 6 blocks for 128-px inputs
        self.discriminator_features = 64         # CycleGAN: ndf 64
        self.discriminator_layers = 3            # CycleGAN: 70x70 PatchGAN (3 layers)
        self.i2i_padding_mode = 'zeros'          # nnU-Net's convs pad with zeros (CycleGAN: reflect; 0.1: replicate)
        self.generator_strided_stem = False      # True: the generators work one resolution stage lower (networks.py)
        self.mri_num_channels = 1                # one unpaired channel (T2w MRI in the paper)
        # the unpaired modality ('MRI', 'CT'); None: the one unpaired folder preprocessed for this configuration, or,
        # with both, the modality other than the labelled one (mri_unpaired.loader.find_unpaired_folder; logged)
        self.unpaired_modality = None
        self.grad_clip_norm = 12.0               # nnU-Net's gradient clipping, applied to every network
        # a network whose loss or gradient is not finite skips that iteration's step (the others go on); this many
        # in a row stop training (AMP's grad scaler skips a few steps while it finds its scale: 50 halvings take it
        # from 2^16 to 2^-34)
        self.max_consecutive_nonfinite = 50
        self.save_snapshot_every = 10            # epochs between PNGs of CT / pMRI / MRI / label

        self.teacher = self.i2i = self.teacher_on_pseudo_mri = None
        # everything CMEDL adds draws from random streams of its own (set in initialize, seeded like the run): the
        # student's initial weights and nnU-Net's batches are those of plain nnU-Net with the same seed (experiment.py)
        self.cmedl_random = None
        self.student_tap = self.teacher_tap = None
        # what the training step calls for the I2I method's two passes: its own methods, or (multi-GPU) DDP modules
        # running them (wrap_cmedl_networks_in_ddp; the taps likewise)
        self.i2i_generator_pass = self.i2i_discriminator_loss = None
        self.optimizer_teacher = self.lr_scheduler_teacher = None
        self.optimizer_generators = self.lr_scheduler_generators = None
        self.optimizer_discriminators = self.lr_scheduler_discriminators = None
        # AMP loss scalers (CUDA): the student keeps nnU-Net's self.grad_scaler, the generators and the teacher share
        # one (both also the student's when the hint is not detached: train_step); the discriminators have
        # their own
        self.grad_scaler_translation = GradScaler("cuda") if self.device.type == 'cuda' else None
        self.grad_scaler_discriminators = GradScaler("cuda") if self.device.type == 'cuda' else None
        self.dataloader_mri = None
        self._nonfinite_skips, self._nonfinite_streak = {}, {}  # per network: this epoch's skips, the current run
        self._snapshot_due, self._snapshot = False, None
        self.modality_names = ('CT', 'MRI')      # (labelled, unpaired) for figures; set when the unpaired data is found

    # ------------------------------------------------------------------ building
    def initialize(self):
        super().initialize()  # student (self.network), its SGD + PolyLR, nnU-Net's deep-supervised Dice+CE loss
        self.cmedl_random = RandomStreams(rank_seed(self.seed, self.local_rank))
        with self.cmedl_random.active():
            self.teacher = self.build_teacher()
            self.i2i = self.build_i2i_method()
            self.teacher_on_pseudo_mri = SegmenterOnTranslated(self.i2i.generator, self.teacher)
            self.student_tap = self.build_feature_tap(self.network)
            self.teacher_tap = self.build_feature_tap(self.teacher)
            self.configure_cmedl_optimizers()
            self._register_log_keys()
            if self._do_i_compile():
                self.compile_cmedl_networks()
            self.i2i_generator_pass, self.i2i_discriminator_loss = self.i2i.generator_pass, self.i2i.discriminator_loss
            if self.is_ddp:
                self.wrap_cmedl_networks_in_ddp()

    def build_teacher(self) -> nn.Module:
        """nnU-Net's network for the pseudo-MRI (the plans' architecture, MRI channels in; in a cascade's second
        stage also the previous stage's segmentation, like the student: i2i/cascade.py)."""
        return self.build_network_architecture(
            self.plans_manager, self.configuration_manager,
            self.mri_num_channels + previous_stage_channels(self.configuration_manager, self.num_input_channels),
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)

    def build_i2i_method(self):
        return build_i2i(self.i2i_method, I2IArchitecture.from_configuration(self.configuration_manager),
                         **self.i2i_kwargs()).to(self.device)

    def i2i_kwargs(self) -> dict:
        """The I2I method's constructor arguments (saved in the checkpoint as ``cmedl_i2i_kwargs``)."""
        kwargs = dict(ct_channels=self.num_input_channels, mri_channels=self.mri_num_channels,
                      generator_features=self.generator_features, num_downsamplings=self.generator_downsamplings,
                      num_res_blocks=self.generator_res_blocks, discriminator_features=self.discriminator_features,
                      discriminator_layers=self.discriminator_layers, padding_mode=self.i2i_padding_mode,
                      strided_stem=self.generator_strided_stem, lambda_adversarial=self.lambda_adversarial)
        if self.i2i_method == 'cyclegan':
            kwargs.update(lambda_cycle=self.lambda_cycle, lambda_identity=self.lambda_identity,
                          image_pool_size=self.image_pool_size)
        elif self.i2i_method == 'cut':
            kwargs.update(lambda_nce=self.lambda_nce, nce_identity=self.nce_identity, nce_patches=self.nce_patches,
                          nce_mlp_features=self.nce_mlp_features, nce_temperature=self.nce_temperature)
        return kwargs

    def build_feature_tap(self, network: nn.Module) -> nn.Module:
        """``tap(x) -> (output, hinted decoder features)``; override for networks other than nnU-Net's U-Nets."""
        return DecoderFeatureTap(network, self.hint_decoder_stages)

    def compile_cmedl_networks(self, **compile_kwargs):
        """Where nnU-Net compiles the student, compile the rest too: the feature taps the training step runs, the
        teacher (validation on pMRI) and the I2I networks; in place, so state-dict keys stay as they are."""
        self.print_to_log_file('Using torch.compile for the teacher, the I2I networks and the feature taps...')
        for module in (self.student_tap, self.teacher_tap, self.teacher):
            module.compile(**compile_kwargs)
        self.i2i.compile_networks(**compile_kwargs)

    def wrap_cmedl_networks_in_ddp(self):
        """Multi-GPU (-num_gpus): every network with an optimiser in DDP, as the pass that trains it (training/ddp.py):
        the student and the teacher as their feature taps, the generators (CUT: with its MLP heads) as the I2I
        method's generator pass, the discriminators as its discriminator loss. nnU-Net's own DDP of ``self.network``
        stays for validation and the final validation, which run without gradients (its reducer never arms)."""
        if self.student_tap is not None:
            self.student_tap = wrap_in_ddp(TrainingPass(self.student_tap, [unwrap(self.network)]), self.device)
        if self.teacher_tap is not None:
            self.teacher_tap = wrap_in_ddp(TrainingPass(self.teacher_tap, [unwrap(self.teacher)]), self.device)
        self.i2i_generator_pass = wrap_in_ddp(TrainingPass(self.i2i.generator_pass, self.i2i.generator_modules()),
                                              self.device)
        self.i2i_discriminator_loss = wrap_in_ddp(
            TrainingPass(self.i2i.discriminator_loss, self.i2i.discriminator_modules()), self.device)

    def configure_cmedl_optimizers(self):
        """The teacher like nnU-Net's student (SGD + PolyLR, or nnUNetTrainerAdam's AdamW: ``teacher_optimizer``);
        the GAN part like CycleGAN (Adam, constant-then-linear)."""
        lr = self.initial_lr if self.teacher_initial_lr is None else self.teacher_initial_lr
        if self.teacher_optimizer == 'sgd':
            self.optimizer_teacher = torch.optim.SGD(self.teacher.parameters(), lr,
                                                     weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        elif self.teacher_optimizer == 'adamw':
            self.optimizer_teacher = torch.optim.AdamW(self.teacher.parameters(), lr, weight_decay=self.weight_decay,
                                                       amsgrad=True)
        else:
            raise ValueError(f"teacher_optimizer must be 'sgd' or 'adamw', not {self.teacher_optimizer!r}")
        self.lr_scheduler_teacher = PolyLRScheduler(self.optimizer_teacher, lr, self.num_epochs)
        self.optimizer_generators = torch.optim.Adam(self.i2i.generator_parameters(), self.gan_initial_lr,
                                                     betas=self.gan_betas)
        self.optimizer_discriminators = torch.optim.Adam(self.i2i.discriminator_parameters(), self.gan_initial_lr,
                                                         betas=self.gan_betas)
        self.lr_scheduler_generators = constant_then_linear_decay(
            self.optimizer_generators, self.num_epochs, self.gan_constant_lr_fraction)
        self.lr_scheduler_discriminators = constant_then_linear_decay(
            self.optimizer_discriminators, self.num_epochs, self.gan_constant_lr_fraction)

    # ------------------------------------------------------------------ the training step: CMEDL's loss sum
    @draws_from_cmedl_random_streams
    def train_step(self, batch: dict) -> dict:
        ct, target = self._batch_to_device(batch)
        mri = next(self.dataloader_mri)['data'].to(self.device, non_blocking=True)

        # 1-4. one forward of each network: pMRI = G(CT) with the I2I's generator losses; the teacher on pMRI, whose
        # loss trains the teacher and (weighted lambda_teacher_seg_on_generator) the generator; the student on CT;
        # the hint pulling the student's decoder features toward the teacher's
        with self._autocast():
            i2i = self.i2i_generator_pass(ct, mri)
            output_teacher, teacher_features = self.teacher_tap(
                scale_gradient(i2i.pseudo_mri, self.lambda_teacher_seg_on_generator))
            output_student, student_features = self.student_tap(ct)
            loss_teacher = self.loss(output_teacher, target)
            loss_student = self.loss(output_student, target)
            loss_hint = self.hint(student_features, teacher_features, output_student, output_teacher, target)
            weight_hint = self.epoch_hint_weight()
            loss_translation = i2i.loss + loss_teacher           # trains the generators and the teacher
            loss_distilled_student = loss_student + weight_hint * loss_hint
        # CMEDL's loss sum, loss_translation + loss_distilled_student, in one backward. With the teacher's features
        # detached in the hint (the default) the two parts train disjoint networks, and on CUDA the student's part is
        # scaled by nnU-Net's AMP grad scaler alone, as in plain nnU-Net
        translation = {
            'generators': (self.optimizer_generators, self.i2i.generator_parameters(), [i2i.loss, loss_teacher]),
            'teacher': (self.optimizer_teacher, self.teacher.parameters(), [loss_teacher])}
        student_terms = [loss_student] + ([loss_hint] if weight_hint else [])
        student = {'student': (self.optimizer, self.network.parameters(), student_terms)}
        if self.hint_detach_teacher:
            self._optimize((loss_translation, self.grad_scaler_translation, translation),
                           (loss_distilled_student, self.grad_scaler, student))
        else:  # the hint trains the teacher (and the generators) too: one loss, one scaler
            self._optimize((loss_translation + loss_distilled_student, self.grad_scaler, {**translation, **student}))

        # 5. discriminators: real vs. fake (CycleGAN: pooled fakes)
        loss_discriminators = self.discriminator_step(ct, mri, i2i)
        self._keep_snapshot(ct, i2i.pseudo_mri, mri, target)
        # 'loss' is the student's segmentation loss: nnU-Net's train_losses stay comparable with a plain nnU-Net
        return self._logged({'loss': loss_student, **{'G_' + k: v for k, v in i2i.terms.items()},
                             'D': loss_discriminators, 'teacher_seg': loss_teacher, 'student_seg': loss_student,
                             'hint': loss_hint})

    def hint(self, student_features, teacher_features, output_student, output_teacher, target) -> torch.Tensor:
        """CMEDL's hint loss (see hint_target, hint_mask, hint_normalisation, hint_detach_teacher)."""
        mask = self.hint_voxels(output_teacher, target)
        if self.hint_target == 'features':
            return hint_loss(student_features, teacher_features, detach_teacher=self.hint_detach_teacher,
                             normalisation=self.hint_normalisation, mask=mask)
        if self.hint_target == 'outputs':
            return output_hint_loss(output_student, output_teacher, self.output_hint_temperature,
                                    self.label_manager.has_regions, detach_teacher=self.hint_detach_teacher, mask=mask)
        raise ValueError(f"hint_target {self.hint_target!r}: expected one of {', '.join(HINT_TARGETS)}")

    def hint_voxels(self, output_teacher, target):
        """Where the hint applies (see hint_mask): None for every voxel."""
        if self.hint_mask == 'none':
            return None
        if self.hint_mask in ('teacher_correct', 'teacher_correct_foreground'):
            return teacher_correct_mask(output_teacher, target, self.label_manager.has_regions,
                                        foreground_only=self.hint_mask == 'teacher_correct_foreground',
                                        has_ignore_label=self.label_manager.has_ignore_label)
        raise ValueError(f"hint_mask {self.hint_mask!r}: expected one of {', '.join(HINT_MASKS)}")

    def discriminator_step(self, ct, mri, i2i) -> torch.Tensor:
        """The discriminators' update: real vs. fake (CycleGAN: pooled fakes), with their own grad scaler."""
        with self._autocast():
            loss = self.i2i_discriminator_loss(ct, mri, i2i.fakes)
        self._optimize((loss, self.grad_scaler_discriminators, {
            'discriminators': (self.optimizer_discriminators, self.i2i.discriminator_parameters(), [loss])}))
        return loss

    def _keep_snapshot(self, ct, pseudo_mri, mri, target) -> None:
        if self._snapshot_due:
            self._snapshot = figures.snapshot_arrays(ct, pseudo_mri, mri, target, *self.modality_names)
            self._snapshot_due = False

    @staticmethod
    def _logged(values: dict) -> dict:
        stacked = torch.stack([v.detach().float() for v in values.values()]).cpu().numpy()  # one device sync
        return dict(zip(values, stacked))

    def _optimize(self, *groups) -> None:
        """One backward of the groups' losses summed, nnU-Net's gradient clipping per network, the steps. A group is
        ``(loss, grad_scaler, networks)``: on CUDA its loss is scaled by its own AMP grad scaler (None: no scaling; one
        scaler may serve several optimizers); ``networks``: name -> (optimizer, parameters, the loss terms that train
        it). A network gets gradients from its own group's loss only. A network whose loss terms or gradient are not
        finite skips its step, the others go on (one device sync for all of them); see ``max_consecutive_nonfinite``."""
        networks = [(name, network, scaler) for _, scaler, nets in groups for name, network in nets.items()]
        for _, (optimizer, _, _), _ in networks:
            optimizer.zero_grad(set_to_none=True)
        sum(loss if scaler is None else scaler.scale(loss) for loss, scaler, _ in groups).backward()
        for _, (optimizer, _, _), scaler in networks:
            if scaler is not None:
                scaler.unscale_(optimizer)
        checks = []
        for _, (_, parameters, terms), _ in networks:
            norm = torch.nn.utils.clip_grad_norm_(list(parameters), self.grad_clip_norm)
            checks.append(torch.stack([norm.to(self.device)] + [t.detach().float() for t in terms]).sum())
        finite = torch.isfinite(torch.stack(checks))
        if self.is_ddp:  # every rank takes the same decision, or the ranks' weights part (and DDP may wait forever)
            finite = all_ranks_agree(finite)
        for (name, (optimizer, _, _), scaler), ok in zip(networks, finite.tolist()):
            if ok:
                optimizer.step() if scaler is None else scaler.step(optimizer)
            self._count_nonfinite(name, ok)
        for scaler in {id(s): s for _, s, _ in groups if s is not None}.values():
            scaler.update()

    def _count_nonfinite(self, network: str, finite: bool) -> None:
        streak = self._nonfinite_streak
        streak[network] = 0 if finite else streak.get(network, 0) + 1
        if finite:
            return
        self._nonfinite_skips[network] = self._nonfinite_skips.get(network, 0) + 1
        if streak[network] >= self.max_consecutive_nonfinite:
            message = (f"{self.__class__.__name__}: {network}: loss or gradient not finite in {streak[network]} "
                       f"iterations in a row (max_consecutive_nonfinite), epoch "
                       f"{self.current_epoch}; training stopped. The last good checkpoint is "
                       f"{join(self.output_folder, 'checkpoint_latest.pth')} (resume with --c, e.g. with a lower "
                       f"learning rate)")
            self.print_to_log_file(message)
            self._finish_mri_loader()
            raise TrainingStopped(message)

    def _autocast(self):
        # like nnU-Net: autocast on CUDA only (slow on CPU, unsupported on mps)
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def _batch_to_device(self, batch):
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return batch['data'].to(self.device, non_blocking=True), target

    # ------------------------------------------------------------------ the trainer's life
    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # the MRI first: a missing MRI folder fails in seconds, with the command that prepares it. MRI patches carry
        # no segmentation and cost less to augment: half of nnU-Net's worker processes (none if it uses none)
        workers = get_allowed_n_proc_DA()
        workers = workers and max(1, workers // 2)
        # multi-GPU: one loader per rank, with the rank's batch size (nnU-Net splits the configuration's batch size
        # over the ranks) and, in a seeded run, the rank's seeds: the ranks see different MRI patches
        folder, modality, why = find_unpaired_folder(self, self.unpaired_modality)
        if self.warm_start and self.current_epoch == 0:  # a resumed run has its own (load_checkpoint)
            self.load_warm_start()
        self.modality_names = (self.labelled_channel_name(), modality)
        self.print_to_log_file(f"labelled {self.modality_names[0]} (normalised with "
                               f"{self.configuration_manager.normalization_schemes[0]}), unpaired {modality} from "
                               f"{folder} ({why})")
        with self.cmedl_random.active():
            self.dataloader_mri = get_unpaired_dataloader(
                self, num_processes=workers, seeds=worker_seeds(rank_seed(self.seed, self.local_rank), 2, workers),
                modality=modality)
        super().on_train_start()  # ExperimentMixin's restores a resumed run's streams after the loaders' start-up

    def on_train_end(self):
        super().on_train_end()
        self._finish_mri_loader()

    def labelled_channel_name(self) -> str:
        """The labelled dataset's first channel as its dataset.json names it (e.g. CT, T2w)."""
        names = self.dataset_json.get('channel_names', self.dataset_json.get('modality', {}))
        return str(names.get('0', names.get(0, 'image'))) if isinstance(names, dict) else 'image'

    def _finish_mri_loader(self):
        finish = getattr(self.dataloader_mri, '_finish', None)
        if finish is not None:
            finish()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # student: train mode, PolyLR step
        self._nonfinite_skips = {}
        self.teacher.train()
        self.i2i.train()
        self.lr_scheduler_teacher.step(self.current_epoch)  # nnU-Net's PolyLR, like the student's
        for scheduler in (self.lr_scheduler_generators, self.lr_scheduler_discriminators):
            set_epoch(scheduler, self.current_epoch)
        self._snapshot_due = self.local_rank == 0 and self.current_epoch % self.save_snapshot_every == 0
        self._hint_weight_cache = (None, None)  # the last validation's logs are new
        weight = self.epoch_hint_weight()
        if weight != self.lambda_hint:
            self.print_to_log_file(f"hint weight this epoch: {weight:.4g} (lambda_hint {self.lambda_hint}, "
                                   f"warm-up {self.hint_warmup_epochs} epochs, gate {self.hint_gate})")

    def epoch_hint_weight(self) -> float:
        """hint_weight of the current epoch, computed once per epoch rather than in every train_step (a gate reads
        the pseudo-Dice of every epoch so far); recomputed when an attribute it depends on changes."""
        key = (self.current_epoch, self.lambda_hint, self.hint_warmup_epochs, self.hint_gate, self.hint_onset_dice)
        cached_key, weight = self._hint_weight_cache
        if cached_key != key:
            weight = self.hint_weight(self.current_epoch)
            self._hint_weight_cache = (key, weight)
        return weight

    def hint_weight(self, epoch: int) -> float:
        """lambda_hint in this epoch: the warm-up ramp, times the gate (see hint_warmup_epochs / hint_gate)."""
        weight = self.lambda_hint
        if self.hint_warmup_epochs > 0:
            weight *= min(1.0, epoch / self.hint_warmup_epochs)
        logs = self.logger.local_logger.my_fantastic_logging
        student = [float(np.nanmean(d)) for d in logs.get('dice_per_class_or_region', [])]
        if not hint_gate_open(self.hint_gate, logs.get('cmedl_teacher_pseudo_dice_pmri', []), student,
                              self.hint_onset_dice):
            weight = 0.0
        return weight

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        collated = collate_outputs(train_outputs)
        if self.is_ddp:  # every rank's iterations, like nnU-Net's train loss (the skip counts agree already)
            collated = gather_from_all_ranks({name: collated[name] for name in self.train_loss_names()})
        for name in self.train_loss_names():
            self.logger.log('cmedl_' + name, float(np.mean(collated[name])), self.current_epoch)
        for name in self.optimized_networks:
            self.logger.log('cmedl_nonfinite_skips_' + name, self._nonfinite_skips.get(name, 0), self.current_epoch)
        if self._nonfinite_skips:
            self.print_to_log_file("steps skipped for a non-finite loss or gradient: " + ", ".join(
                f"{name} {n}" for name, n in self._nonfinite_skips.items()))

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.teacher.eval()
        self.i2i.eval()

    def validation_step(self, batch: dict) -> dict:
        result = super().validation_step(batch)  # the student on CT
        student = self.network
        self.network = self.teacher_on_pseudo_mri  # the same pseudo-Dice, for the teacher on pMRI
        try:
            teacher = super().validation_step(batch)
        finally:
            self.network = student
        result.update({'teacher_' + k: v for k, v in teacher.items()})
        return result

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        c = collate_outputs(val_outputs)
        if self.is_ddp:  # every rank's validation batches, like nnU-Net's pseudo-Dice: the ranks' gates agree
            c = gather_from_all_ranks({'teacher_' + k: c['teacher_' + k]
                                       for k in ('tp_hard', 'fp_hard', 'fn_hard', 'loss')})
        tp, fp, fn = (np.sum(c['teacher_' + k], 0) for k in ('tp_hard', 'fp_hard', 'fn_hard'))
        self.logger.log('cmedl_teacher_val_loss', float(np.mean(c['teacher_loss'])), self.current_epoch)
        self.logger.log('cmedl_teacher_pseudo_dice_pmri', float(np.nanmean(2 * tp / (2 * tp + fp + fn))),
                        self.current_epoch)

    def on_epoch_end(self):
        if self.local_rank == 0:
            figures.plot_cmedl_progress(self.logger.local_logger.my_fantastic_logging, self.current_epoch,
                                        join(self.output_folder, 'progress_cmedl.png'), *self.modality_names)
            if self._snapshot is not None:
                figures.save_snapshot(self._snapshot, join(self.output_folder, 'cmedl_snapshots',
                                                           f'epoch_{self.current_epoch:04d}.png'))
                self._snapshot = None
        super().on_epoch_end()

    # ------------------------------------------------------------------ logging keys
    def _register_log_keys(self):
        """nnU-Net's logger asserts that a key exists before it is logged, and plots only as many epochs as its
        shortest list: register ours, and pad lists missing from older checkpoints with NaN."""
        logs = self.logger.local_logger.my_fantastic_logging
        epochs = len(logs.get('train_losses', []))
        skips = tuple('nonfinite_skips_' + n for n in self.optimized_networks)
        for name in self.train_loss_names() + self.val_log_names() + skips:
            logs.setdefault('cmedl_' + name, [float('nan')] * epochs)

    def val_log_names(self) -> tuple:
        return VAL_LOG_NAMES

    def train_loss_names(self) -> tuple:
        return tuple('G_' + n for n in I2I_METHODS[self.i2i_method].loss_names) + SEGMENTATION_LOSS_NAMES

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        # the random streams, so that a resumed seeded run draws what the uninterrupted one would have drawn (in the
        # main process; data-augmentation workers restart with their seeds). Multi-GPU: every rank's, gathered (nnU-Net
        # calls save_checkpoint on every rank, under the same conditions); the file is rank 0's to write
        rng = {**global_random_state(), 'cmedl': self.cmedl_random.state}
        rng_per_rank = every_ranks_random_state(self, rng)
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            # nnU-Net's keys: stock inference reads network_weights (the student) and ignores everything else
            'network_weights': unwrap(self.network).state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            # CMEDL's other parts
            'cmedl_teacher_weights': unwrap(self.teacher).state_dict(),
            'cmedl_i2i_method': self.i2i_method,
            'cmedl_modalities': list(self.modality_names),  # (labelled, unpaired): names export-translated's outputs
            'cmedl_i2i_weights': self.i2i.state_dict(),
            'cmedl_i2i_kwargs': self.i2i_kwargs(),
            'cmedl_i2i_state': self.i2i.extra_state(),
            'cmedl_optimizer_states': {k: o.state_dict() for k, o in self._cmedl_optimizers().items()},
            'cmedl_lr_scheduler_states': {k: s.state_dict() for k, s in self._cmedl_lr_schedulers().items()},
            'cmedl_grad_scaler_states': {k: (s.state_dict() if s is not None else None)
                                         for k, s in self._cmedl_grad_scalers().items()},
            RNG_KEY: rng,  # rank 0's in a multi-GPU run: what a single-process resume restores
        }
        if rng_per_rank is not None:
            checkpoint[RNG_PER_RANK_KEY] = rng_per_rank
        remove_stale_temps(filename)  # what a killed save left
        with atomic_path(filename) as tmp:  # a killed run never leaves a truncated checkpoint under the real name
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # overridden whole: nnU-Net 2.7-2.8.1's version fails when given a dict
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            load_checkpoint(filename_or_checkpoint, map_location=self.device, trust=True)  # as nnU-Net: its own run
        student_weights = {(k[7:] if k.startswith('module.') else k): v
                           for k, v in checkpoint['network_weights'].items()}
        unwrap(self.network).load_state_dict(student_weights)
        self.my_init_kwargs = checkpoint['init_args']
        self.current_epoch = checkpoint['current_epoch']
        self.logger.load_checkpoint(checkpoint['logging'])
        self._register_log_keys()
        self._best_ema = checkpoint['_best_ema']
        self.inference_allowed_mirroring_axes = checkpoint.get('inference_allowed_mirroring_axes',
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint['optimizer_state'])
        if self.grad_scaler is not None and checkpoint['grad_scaler_state'] is not None:
            self.grad_scaler.load_state_dict(checkpoint['grad_scaler_state'])

        self._load_teacher_and_i2i(checkpoint, filename_or_checkpoint if isinstance(filename_or_checkpoint, str)
                                   else 'checkpoint')
        for k, o in self._cmedl_optimizers().items():
            o.load_state_dict(checkpoint['cmedl_optimizer_states'][k])
        for k, s in self._cmedl_lr_schedulers().items():
            s.load_state_dict(checkpoint['cmedl_lr_scheduler_states'][k])
        for k, s in self._cmedl_grad_scalers().items():
            state = checkpoint['cmedl_grad_scaler_states'].get(k)
            if s is not None and state is not None:
                s.load_state_dict(state)
        self.keep_random_state(checkpoint)  # restored now (the MRI loader is built from the 'cmedl' stream) and
        if self._rng_to_restore is not None:  # again by on_train_start, after the loaders' start-up batches
            self.restore_random_state(self._rng_to_restore)

    def warm_start_checkpoint(self) -> str:
        """The checkpoint that ``warm_start`` names: a path, or a trainer's final checkpoint beside this run's."""
        if os.sep in self.warm_start or self.warm_start.endswith('.pth'):
            return self.warm_start
        fold = self.fold if self.warm_start_fold is None else self.warm_start_fold
        return join(dirname(self.output_folder_base), f"{self.warm_start}__{self.plans_manager.plans_name}__"
                    f"{self.configuration_name}", f"fold_{fold}", "checkpoint_final.pth")

    def load_warm_start(self) -> None:
        """Generators, discriminators (and CycleGAN's image pools) and the teacher from the ``warm_start``
        checkpoint; the student and all optimisers stay as initialised (no random number is drawn here, so a seeded
        run's student still starts as plain nnU-Net's)."""
        path = self.warm_start_checkpoint()
        if not isfile(path):
            raise TrainingStopped(f"warm start {path}: no such checkpoint (train {self.warm_start} first, or set "
                                  f"warm_start / nnUNet_cmedl_warm_start to an existing CMEDL checkpoint)")
        checkpoint = load_checkpoint(path, map_location=self.device, trust=True)  # a CMEDL run's own output
        self._load_teacher_and_i2i(checkpoint, f"warm start {path}")
        what = "generators, discriminators and teacher" if 'cmedl_teacher_weights' in checkpoint else \
            "teacher (a plain nnU-Net network)"  # nnUNetTrainerCMEDL_ctTeacher's source
        self.print_to_log_file(f"warm start: {what} from {path} ("
                               f"{checkpoint.get('trainer_name')}, after epoch {checkpoint.get('current_epoch')}); "
                               f"student, optimisers and schedules fresh")

    def _load_teacher_and_i2i(self, checkpoint: dict, source: str) -> None:
        """The teacher's and the I2I method's weights and state (CycleGAN's image pools) from a CMEDL checkpoint;
        what does not fit stops training with one line that names ``source``."""
        if 'cmedl_teacher_weights' not in checkpoint:
            raise TrainingStopped(f"{source}: not a CMEDL checkpoint (no teacher/I2I weights); it was written by "
                                  f"{checkpoint.get('trainer_name')}")
        method = checkpoint.get('cmedl_i2i_method', 'cyclegan')
        if method != self.i2i_method:
            raise TrainingStopped(f"{source}: its I2I method is {method}, this trainer's is {self.i2i_method}")
        try:
            unwrap(self.teacher).load_state_dict(checkpoint['cmedl_teacher_weights'])
            self.i2i.load_state_dict(checkpoint['cmedl_i2i_weights'])
        except RuntimeError as e:
            raise TrainingStopped(f"{source}: its networks do not fit this trainer's (other plans, configuration or "
                                  f"I2I sizes?): {str(e).splitlines()[0]}") from None
        # checkpoints of nnunet-cmedl 0.1 kept CycleGAN's image pools under 'cmedl_image_pools'
        self.i2i.load_extra_state(checkpoint['cmedl_i2i_state'] if 'cmedl_i2i_state' in checkpoint
                                  else {'image_pools': checkpoint['cmedl_image_pools']}, self.device)

    def restore_random_state(self, rng: dict) -> None:
        """The global streams and CMEDL's own, as saved (a resumed seeded run draws what the uninterrupted run drew,
        with nnUNet_n_proc_DA=0, on the CPU)."""
        super().restore_random_state(rng)
        if 'cmedl' in rng:  # older checkpoints: CMEDL drew from the global streams then
            self.cmedl_random.state = rng['cmedl']

    def _cmedl_optimizers(self) -> dict:
        return {'teacher': self.optimizer_teacher, 'generators': self.optimizer_generators,
                'discriminators': self.optimizer_discriminators}

    def _cmedl_lr_schedulers(self) -> dict:
        return {'teacher': self.lr_scheduler_teacher, 'generators': self.lr_scheduler_generators,
                'discriminators': self.lr_scheduler_discriminators}

    def _cmedl_grad_scalers(self) -> dict:
        return {'translation': self.grad_scaler_translation, 'discriminators': self.grad_scaler_discriminators}
