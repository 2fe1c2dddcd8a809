"""nnunet-cmedl: CMEDL (unpaired cross-modality educed distillation) as nnU-Net v2 trainers.

Where each part of the method lives:
  - I2I (CT <-> MRI CycleGAN generators, PatchGAN discriminators, losses): ``nnunet_cmedl/i2i/``
  - hint / feature-distillation loss and decoder feature hooks:          ``nnunet_cmedl/distillation/``
  - the trainer (teacher + student + I2I, trained together):              ``nnunet_cmedl/training/``
  - unpaired MRI ingestion and loading:                                   ``mri_unpaired/``
"""
__version__ = "0.1.0"
