"""Re-exports nnunet-cmedl's trainer classes for nnU-Net's trainer lookup (``nnUNet_extTrainer``).

nnU-Net imports every module of the folders listed in ``nnUNet_extTrainer`` and drops them from ``sys.modules``
afterwards. The classes themselves therefore live in the installed package (``nnunet_cmedl.training``): what this
module re-exports are the installed classes, which pickle (data-augmentation workers) like any other.
The module name is deliberately unique so that it shadows nothing.
"""
from nnunet_cmedl.training import *  # noqa: F401,F403
from nnunet_cmedl.training import __all__  # noqa: F401
