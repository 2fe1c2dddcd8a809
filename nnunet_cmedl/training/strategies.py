"""The paper's other ways of using the unpaired MRI (its ablations), as trainers beside CMEDL.

- ``nnUNetTrainerPseudoMRI`` (pMRI-only): one segmentation network on the pseudo-MRI G(CT), trained with the CT
  labels together with the I2I method (as CMEDL trains its teacher);
- ``nnUNetTrainerCTPseudoMRI`` (CT+pMRI): one segmentation network on the two channels [CT, G(CT)].

Both deploy the generator followed by the segmenter: the trainer's ``build_network_architecture`` (what stock
``nnUNetv2_predict`` calls, from the class alone) builds them as one module, ``SegmenterOnTranslated``, so the
checkpoint's ``network_weights`` holds both and inference needs nothing of ours beyond the trainer class. Unlike
CMEDL's student, inference costs a generator pass on top of the segmenter (docs/strategies.md).

Everything else (the I2I method and its discriminators, their optimisers, the unpaired MRI loader, non-finite
steps, checkpoints and resume) is nnUNetTrainerCMEDL's: the segmenter takes the teacher's place, there is no
student and no hint.
"""
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cmedl.distillation.hint import unwrap
from nnunet_cmedl.distillation.teacher import SegmenterOnTranslated, scale_gradient
from nnunet_cmedl.i2i import I2I_METHODS
from nnunet_cmedl.i2i.cascade import refuse_cascade
from nnunet_cmedl.i2i.networks import I2IArchitecture, ResnetGenerator, init_weights_normal
from nnunet_cmedl.training.ddp import TrainingPass, wrap_in_ddp
from nnunet_cmedl.training.nnUNetTrainerCMEDL import draws_from_cmedl_random_streams, nnUNetTrainerCMEDL

MRI_CHANNELS = 1


class nnUNetTrainerPseudoMRI(nnUNetTrainerCMEDL):
    """pMRI-only: CT -> G -> pMRI -> segmenter, trained end to end with the I2I method (CycleGAN; ``i2i_method``)."""
    segment_with_ct = False
    optimized_networks = ("generators", "segmenter", "discriminators")
    # The generator's sizes as class attributes: nnU-Net's inference builds the network from the class alone
    # (build_network_architecture gets the plans, not the trainer). Defaults: nnUNetTrainerCMEDL's.
    generator_settings = dict(generator_features=32, generator_downsamplings=2, generator_res_blocks=6,
                              i2i_padding_mode='zeros', generator_strided_stem=False)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in self.generator_settings.items():
            setattr(self, name, value)
        self.lambda_hint = 0.0  # no student, no hint
        self.segmenter_pass = None  # what the training step calls: the network's segment, or (multi-GPU) DDP of it

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        g = cls.generator_settings
        arch = I2IArchitecture.from_configuration(configuration_manager).with_padding(g['i2i_padding_mode'])
        generator = ResnetGenerator(arch, num_input_channels, MRI_CHANNELS, base_features=g['generator_features'],
                                    num_downsamplings=g['generator_downsamplings'],
                                    num_res_blocks=g['generator_res_blocks'],
                                    strided_stem=g['generator_strided_stem'])
        generator.apply(init_weights_normal)
        segmenter = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, MRI_CHANNELS + (num_input_channels if cls.segment_with_ct else 0),
            num_output_channels, enable_deep_supervision)
        return SegmenterOnTranslated(generator, segmenter, cls.segment_with_ct)

    # ------------------------------------------------------------------ building: the segmenter is the teacher
    def initialize(self):
        refuse_cascade(self, "the generator would translate with the image")
        differ = {k: getattr(self, k) for k, v in self.generator_settings.items() if getattr(self, k) != v}
        if differ:
            raise ValueError(f"{self.__class__.__name__}: generator sizes {differ} differ from the class attribute "
                             f"generator_settings {self.generator_settings}; set them there (nnU-Net's inference "
                             f"builds the network from the class alone)")
        super().initialize()

    def configure_optimizers(self):
        """nnU-Net's SGD + PolyLR for the segmenter only (the generator is the I2I method's: Adam)."""
        segmenter = unwrap(self.network).segmenter
        optimizer = torch.optim.SGD(segmenter.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def build_teacher(self):
        return unwrap(self.network).segmenter

    def build_i2i_method(self):
        i2i = super().build_i2i_method()
        i2i.ct_to_mri = unwrap(self.network).generator  # one generator: the I2I's G is the deployed network's
        return i2i

    def build_feature_tap(self, network):
        return None  # no hint

    def wrap_cmedl_networks_in_ddp(self):
        """Multi-GPU: the I2I method's passes as in CMEDL (the generator pass trains the deployed network's generator),
        and the segmenter as its segmentation of [CT,] pMRI."""
        super().wrap_cmedl_networks_in_ddp()
        network = unwrap(self.network)
        self.segmenter_pass = wrap_in_ddp(TrainingPass(network.segment, [network.segmenter]), self.device)

    def compile_cmedl_networks(self, **compile_kwargs):
        self.print_to_log_file('Using torch.compile for the I2I networks...')
        self.i2i.compile_networks(**compile_kwargs)

    def configure_cmedl_optimizers(self):
        super().configure_cmedl_optimizers()
        self.optimizer_teacher, self.lr_scheduler_teacher = self.optimizer, self.lr_scheduler  # the segmenter's

    def _cmedl_optimizers(self) -> dict:
        return {'generators': self.optimizer_generators, 'discriminators': self.optimizer_discriminators}

    def _cmedl_lr_schedulers(self) -> dict:
        return {'generators': self.lr_scheduler_generators, 'discriminators': self.lr_scheduler_discriminators}

    # ------------------------------------------------------------------ the training step
    @draws_from_cmedl_random_streams
    def train_step(self, batch: dict) -> dict:
        ct, target = self._batch_to_device(batch)
        mri = next(self.dataloader_mri)['data'].to(self.device, non_blocking=True)
        network = unwrap(self.network)
        segment = network.segment if self.segmenter_pass is None else self.segmenter_pass
        with self._autocast():
            i2i = self.i2i_generator_pass(ct, mri)
            output = segment(ct, scale_gradient(i2i.pseudo_mri, self.lambda_teacher_seg_on_generator))
            loss_seg = self.loss(output, target)
            loss = i2i.loss + loss_seg
        self._optimize((loss, self.grad_scaler, {
            'generators': (self.optimizer_generators, self.i2i.generator_parameters(), [i2i.loss, loss_seg]),
            'segmenter': (self.optimizer, network.segmenter.parameters(), [loss_seg])}))
        loss_discriminators = self.discriminator_step(ct, mri, i2i)
        self._keep_snapshot(ct, i2i.pseudo_mri, mri, target)
        return self._logged({'loss': loss_seg, **{'G_' + k: v for k, v in i2i.terms.items()},
                             'D': loss_discriminators, 'seg': loss_seg})

    def train_loss_names(self) -> tuple:
        return tuple('G_' + n for n in I2I_METHODS[self.i2i_method].loss_names) + ('D', 'seg')

    # ------------------------------------------------------------------ validation: nnU-Net's, on the whole network
    def validation_step(self, batch: dict) -> dict:
        return nnUNetTrainer.validation_step(self, batch)

    def on_validation_epoch_end(self, val_outputs):
        nnUNetTrainer.on_validation_epoch_end(self, val_outputs)

    def val_log_names(self) -> tuple:
        return ()


class nnUNetTrainerCTPseudoMRI(nnUNetTrainerPseudoMRI):
    """CT+pMRI: [CT, G(CT)] -> segmenter, trained end to end with the I2I method."""
    segment_with_ct = True
