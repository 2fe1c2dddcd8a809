"""nnUNetTrainerCMEDL: unpaired cross-modality educed distillation (Jiang et al., IEEE TMI 2022) in nnU-Net v2.

Every iteration trains, together and from scratch:
  1. the I2I generators CT -> pseudo-MRI (pMRI) and MRI -> CT (adversarial + cycle + identity losses, plus the
     teacher's segmentation loss on pMRI, which keeps tumours where they are);
  2. the two PatchGAN discriminators (real vs. pooled fakes);
  3. the teacher: nnU-Net's network on pMRI, trained with the CT labels;
  4. the student: nnU-Net's network on CT (``self.network``), plus the hint loss pulling its last decoder features
     toward the teacher's features on the matching pMRI.
Only the student is needed for inference: ``network_weights`` in the checkpoint is exactly a stock nnU-Net network.
"""
from contextlib import contextmanager
from os.path import join
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

from mri_unpaired.loader import get_unpaired_mri_dataloader
from nnunet_cmedl.distillation.hint import FeatureRecorder, decoder_stages, hint_loss, resolve_stage_indices, unwrap
from nnunet_cmedl.i2i.losses import ImagePool, LSGANLoss
from nnunet_cmedl.i2i.networks import CycleGAN, I2IArchitecture
from nnunet_cmedl.training import figures
from nnunet_cmedl.training.lr_schedulers import ConstantThenLinearDecayLR
from nnunet_cmedl.utils.atomic import atomic_temp_path, replace_path

# per-iteration losses returned by train_step and logged once per epoch (key in nnU-Net's logger: 'cmedl_' + name)
TRAIN_LOSS_NAMES = ("G_adversarial", "G_cycle", "G_identity", "G_teacher_seg", "D", "teacher_seg", "student_seg",
                    "hint")
VAL_LOG_NAMES = ("teacher_val_loss", "teacher_pseudo_dice_pmri")


@contextmanager
def frozen(*modules: nn.Module):
    """Parameters of ``modules`` get no gradients from the forward passes inside (CycleGAN's set_requires_grad)."""
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, s in zip(params, states):
            p.requires_grad_(s)


class TeacherOnPseudoMRI(nn.Module):
    """CT -> generator -> pMRI -> teacher: lets nnU-Net's validation step measure the teacher on pMRI."""

    def __init__(self, generator: nn.Module, teacher: nn.Module):
        super().__init__()
        self.generator, self.teacher = generator, teacher

    def forward(self, ct):
        return self.teacher(self.generator(ct))


class nnUNetTrainerCMEDL(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError("nnUNetTrainerCMEDL does not support multi-GPU training (-num_gpus > 1) yet: "
                                      "the teacher and I2I networks are not wrapped in DDP. Train on one GPU.")
        # ---- CMEDL hyperparameters (where each default comes from) ----
        self.lambda_adversarial = 1.0            # CycleGAN: adversarial terms weighted 1
        self.lambda_cycle = 10.0                 # CycleGAN's lambda for the L1 cycle loss
        self.lambda_identity = 0.5               # CycleGAN: identity loss = 0.5 x lambda_cycle
        self.lambda_teacher_seg_on_generator = 1.0  # PSIGAN/CMEDL code: the teacher's seg loss on pMRI drives G too
        self.lambda_hint = 1.0                   # CMEDL: hint loss added to the student's loss with weight 1
        self.hint_decoder_stages = (-2, -1)      # CMEDL: the last two (highest-resolution) decoder stages
        self.hint_detach_teacher = True          # CMEDL: the informative teacher teaches, the hint moves the student
        self.gan_initial_lr = 2e-4               # CycleGAN: Adam, lr 2e-4, betas (0.5, 0.999)
        self.gan_betas = (0.5, 0.999)
        self.gan_constant_lr_fraction = 0.5      # CycleGAN: constant lr for half the epochs, then linear decay to 0
        self.image_pool_size = 50                # CycleGAN: history of 50 generated images for the discriminators
        self.generator_features = 32             # CycleGAN: ngf 64; halved so that 3d configurations fit
        self.generator_downsamplings = 2         # CycleGAN: 2
        self.generator_res_blocks = 6            # CycleGAN: 6 blocks for 128-px inputs
        self.discriminator_features = 64         # CycleGAN: ndf 64
        self.discriminator_layers = 3            # CycleGAN: 70x70 PatchGAN (3 layers)
        self.mri_num_channels = 1                # one T2w MRI channel
        self.grad_clip_norm = 12.0               # nnU-Net's gradient clipping, applied to every network
        self.save_snapshot_every = 10            # epochs between PNGs of CT / pMRI / MRI / label

        self.teacher = self.i2i = self.teacher_on_pseudo_mri = None
        self.optimizer_teacher = self.lr_scheduler_teacher = None
        self.optimizer_generators = self.lr_scheduler_generators = None
        self.optimizer_discriminators = self.lr_scheduler_discriminators = None
        self.student_features = self.teacher_features = None
        self.gan_loss = LSGANLoss()
        self.pool_pseudo_mri = self.pool_fake_ct = None
        # the student and teacher share nnU-Net's self.grad_scaler (one backward); the GAN steps have their own
        self.grad_scaler_generators = GradScaler("cuda") if self.device.type == 'cuda' else None
        self.grad_scaler_discriminators = GradScaler("cuda") if self.device.type == 'cuda' else None
        self.dataloader_mri = None
        self._snapshot_due, self._snapshot = False, None
        self._register_log_keys()

    # ------------------------------------------------------------------ building
    def initialize(self):
        super().initialize()  # student (self.network), its SGD + PolyLR, nnU-Net's deep-supervised Dice+CE loss
        self.teacher = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.mri_num_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)
        self.i2i = CycleGAN(I2IArchitecture.from_configuration(self.configuration_manager), **self.i2i_kwargs()
                            ).to(self.device)
        self.teacher_on_pseudo_mri = TeacherOnPseudoMRI(self.i2i.ct_to_mri, self.teacher)
        self.student_features = FeatureRecorder(self.hint_layers(self.network))
        self.teacher_features = FeatureRecorder(self.hint_layers(self.teacher))
        self.pool_pseudo_mri = ImagePool(self.image_pool_size)
        self.pool_fake_ct = ImagePool(self.image_pool_size)
        self.configure_cmedl_optimizers()

    def i2i_kwargs(self) -> dict:
        return dict(ct_channels=self.num_input_channels, mri_channels=self.mri_num_channels,
                    generator_features=self.generator_features, num_downsamplings=self.generator_downsamplings,
                    num_res_blocks=self.generator_res_blocks, discriminator_features=self.discriminator_features,
                    discriminator_layers=self.discriminator_layers)

    def hint_layers(self, network: nn.Module) -> List[nn.Module]:
        stages = decoder_stages(network)
        return [stages[i] for i in resolve_stage_indices(len(stages), self.hint_decoder_stages)]

    def configure_cmedl_optimizers(self):
        """The teacher like nnU-Net's student (SGD + PolyLR); the GAN part like CycleGAN (Adam, constant-then-linear)."""
        self.optimizer_teacher = torch.optim.SGD(self.teacher.parameters(), self.initial_lr,
                                                 weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        self.lr_scheduler_teacher = PolyLRScheduler(self.optimizer_teacher, self.initial_lr, self.num_epochs)
        self.optimizer_generators = torch.optim.Adam(self.i2i.generators.parameters(), self.gan_initial_lr,
                                                     betas=self.gan_betas)
        self.optimizer_discriminators = torch.optim.Adam(self.i2i.discriminators.parameters(), self.gan_initial_lr,
                                                         betas=self.gan_betas)
        self.lr_scheduler_generators = ConstantThenLinearDecayLR(
            self.optimizer_generators, self.gan_initial_lr, self.num_epochs, self.gan_constant_lr_fraction)
        self.lr_scheduler_discriminators = ConstantThenLinearDecayLR(
            self.optimizer_discriminators, self.gan_initial_lr, self.num_epochs, self.gan_constant_lr_fraction)

    # ------------------------------------------------------------------ the training step: CMEDL's loss sum
    def train_step(self, batch: dict) -> dict:
        ct, target = self._batch_to_device(batch)
        mri = next(self.dataloader_mri)['data'].to(self.device, non_blocking=True)

        # 1. generators: adversarial + cycle + identity, plus the teacher's segmentation of the pseudo-MRI
        with self._autocast():
            pseudo_mri = self.i2i.ct_to_mri(ct)  # computed once, reused by every step below
            g = self.generator_losses(ct, mri, pseudo_mri, target)
            loss_generators = (self.lambda_adversarial * g['G_adversarial'] + self.lambda_cycle * g['G_cycle']
                               + self.lambda_identity * self.lambda_cycle * g['G_identity']
                               + self.lambda_teacher_seg_on_generator * g['G_teacher_seg'])
        self._optimize(loss_generators, [self.optimizer_generators], self.grad_scaler_generators,
                       [self.i2i.generators])

        # 2. discriminators: real vs. pooled fake, one per domain
        with self._autocast():
            loss_discriminators = self.discriminator_loss(ct, mri, pseudo_mri.detach(), g['fake_ct'].detach())
        self._optimize(loss_discriminators, [self.optimizer_discriminators], self.grad_scaler_discriminators,
                       [self.i2i.discriminators])

        # 3 + 4. teacher on pMRI, student on CT; the hint pulls the student's decoder features to the teacher's
        with self._autocast():
            with self.teacher_features.recording() as teacher_features:
                output_teacher = self.teacher(pseudo_mri.detach())
            with self.student_features.recording() as student_features:
                output_student = self.network(ct)
            loss_teacher = self.loss(output_teacher, target)
            loss_student = self.loss(output_student, target)
            loss_hint = hint_loss(student_features, teacher_features, detach_teacher=self.hint_detach_teacher)
            loss_segmentation = loss_teacher + loss_student + self.lambda_hint * loss_hint
        self._optimize(loss_segmentation, [self.optimizer_teacher, self.optimizer], self.grad_scaler,
                       [self.teacher, self.network])

        if self._snapshot_due:
            self._snapshot = figures.snapshot_arrays(ct, pseudo_mri, mri, target)
            self._snapshot_due = False
        losses = {k: v for k, v in g.items() if k in TRAIN_LOSS_NAMES}
        losses.update(D=loss_discriminators, teacher_seg=loss_teacher, student_seg=loss_student, hint=loss_hint)
        # 'loss' is the student's segmentation loss: nnU-Net's train_losses stay comparable with a plain nnU-Net
        return {'loss': loss_student.detach().cpu().numpy(),
                **{k: v.detach().float().cpu().numpy() for k, v in losses.items()}}

    def generator_losses(self, ct, mri, pseudo_mri, target) -> dict:
        """CycleGAN's generator losses (unweighted) and the teacher's segmentation loss on the pseudo-MRI."""
        to_mri, to_ct = self.i2i.ct_to_mri, self.i2i.mri_to_ct
        fake_ct = to_ct(mri)
        with frozen(self.i2i.discriminators, self.teacher):  # they are judges here, updated in their own steps
            adversarial = (self.gan_loss(self.i2i.discriminator_mri(pseudo_mri), True)
                           + self.gan_loss(self.i2i.discriminator_ct(fake_ct), True))
            teacher_seg = self.loss(self.teacher(pseudo_mri), target)
        cycle = nn.functional.l1_loss(to_ct(pseudo_mri), ct) + nn.functional.l1_loss(to_mri(fake_ct), mri)
        if self.lambda_identity > 0 and ct.shape[1] == mri.shape[1]:
            identity = nn.functional.l1_loss(to_mri(mri), mri) + nn.functional.l1_loss(to_ct(ct), ct)
        else:  # identity needs equal channel counts (multi-channel CT has no MRI-shaped identity)
            identity = torch.zeros((), device=ct.device)
        return {'G_adversarial': adversarial, 'G_cycle': cycle, 'G_identity': identity, 'G_teacher_seg': teacher_seg,
                'fake_ct': fake_ct}

    def discriminator_loss(self, ct, mri, pseudo_mri, fake_ct) -> torch.Tensor:
        """LSGAN discriminator loss, 0.5 x (real + fake) per domain, fakes drawn through the image pools."""
        d_mri, d_ct = self.i2i.discriminator_mri, self.i2i.discriminator_ct
        loss_mri = self.gan_loss(d_mri(mri), True) + self.gan_loss(d_mri(self.pool_pseudo_mri.query(pseudo_mri)), False)
        loss_ct = self.gan_loss(d_ct(ct), True) + self.gan_loss(d_ct(self.pool_fake_ct.query(fake_ct)), False)
        return 0.5 * (loss_mri + loss_ct)

    def _optimize(self, loss, optimizers, grad_scaler, modules) -> None:
        """Backward, nnU-Net's gradient clipping per network, step; with AMP's grad scaler on CUDA."""
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        if grad_scaler is None:
            loss.backward()
        else:
            grad_scaler.scale(loss).backward()
            for o in optimizers:
                grad_scaler.unscale_(o)
        for m in modules:
            torch.nn.utils.clip_grad_norm_(m.parameters(), self.grad_clip_norm)
        for o in optimizers:
            (o.step() if grad_scaler is None else grad_scaler.step(o))
        if grad_scaler is not None:
            grad_scaler.update()

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
        self.dataloader_mri = get_unpaired_mri_dataloader(self, num_processes=workers and max(1, workers // 2))
        super().on_train_start()

    def on_train_end(self):
        super().on_train_end()
        finish = getattr(self.dataloader_mri, '_finish', None)
        if finish is not None:
            finish()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # student: train mode, PolyLR step
        self.teacher.train()
        self.i2i.train()
        for scheduler in (self.lr_scheduler_teacher, self.lr_scheduler_generators, self.lr_scheduler_discriminators):
            scheduler.step(self.current_epoch)
        self._snapshot_due = self.current_epoch % self.save_snapshot_every == 0

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        collated = collate_outputs(train_outputs)
        for name in TRAIN_LOSS_NAMES:
            self.logger.log('cmedl_' + name, float(np.mean(collated[name])), self.current_epoch)

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
        tp, fp, fn = (np.sum(c['teacher_' + k], 0) for k in ('tp_hard', 'fp_hard', 'fn_hard'))
        self.logger.log('cmedl_teacher_val_loss', float(np.mean(c['teacher_loss'])), self.current_epoch)
        self.logger.log('cmedl_teacher_pseudo_dice_pmri', float(np.nanmean(2 * tp / (2 * tp + fp + fn))),
                        self.current_epoch)

    def on_epoch_end(self):
        if self.local_rank == 0:
            figures.plot_cmedl_progress(self.logger.local_logger.my_fantastic_logging, self.current_epoch,
                                        join(self.output_folder, 'progress_cmedl.png'))
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
        for name in TRAIN_LOSS_NAMES + VAL_LOG_NAMES:
            logs.setdefault('cmedl_' + name, [float('nan')] * epochs)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
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
            'cmedl_i2i_weights': self.i2i.state_dict(),
            'cmedl_i2i_kwargs': self.i2i_kwargs(),
            'cmedl_optimizer_states': {k: o.state_dict() for k, o in self._cmedl_optimizers().items()},
            'cmedl_lr_scheduler_states': {k: s.state_dict() for k, s in self._cmedl_lr_schedulers().items()},
            'cmedl_grad_scaler_states': {k: (s.state_dict() if s is not None else None)
                                         for k, s in self._cmedl_grad_scalers().items()},
            'cmedl_image_pools': {'pseudo_mri': self.pool_pseudo_mri.state_dict(),
                                  'fake_ct': self.pool_fake_ct.state_dict()},
        }
        tmp = atomic_temp_path(filename)  # a killed run never leaves a truncated checkpoint under the real name
        torch.save(checkpoint, tmp)
        replace_path(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # overridden whole: nnU-Net 2.7-2.8.1's version fails when given a dict
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
            torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
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

        if 'cmedl_teacher_weights' not in checkpoint:
            raise RuntimeError(f"{filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else 'checkpoint'}"
                               f": not a CMEDL checkpoint (no teacher/I2I weights); it was written by "
                               f"{checkpoint.get('trainer_name')}")
        unwrap(self.teacher).load_state_dict(checkpoint['cmedl_teacher_weights'])
        self.i2i.load_state_dict(checkpoint['cmedl_i2i_weights'])
        for k, o in self._cmedl_optimizers().items():
            o.load_state_dict(checkpoint['cmedl_optimizer_states'][k])
        for k, s in self._cmedl_lr_schedulers().items():
            s.load_state_dict(checkpoint['cmedl_lr_scheduler_states'][k])
        for k, s in self._cmedl_grad_scalers().items():
            state = checkpoint['cmedl_grad_scaler_states'].get(k)
            if s is not None and state is not None:
                s.load_state_dict(state)
        self.pool_pseudo_mri.load_state_dict(checkpoint['cmedl_image_pools']['pseudo_mri'], self.device)
        self.pool_fake_ct.load_state_dict(checkpoint['cmedl_image_pools']['fake_ct'], self.device)

    def _cmedl_optimizers(self) -> dict:
        return {'teacher': self.optimizer_teacher, 'generators': self.optimizer_generators,
                'discriminators': self.optimizer_discriminators}

    def _cmedl_lr_schedulers(self) -> dict:
        return {'teacher': self.lr_scheduler_teacher, 'generators': self.lr_scheduler_generators,
                'discriminators': self.lr_scheduler_discriminators}

    def _cmedl_grad_scalers(self) -> dict:
        return {'generators': self.grad_scaler_generators, 'discriminators': self.grad_scaler_discriminators}
