"""Unpaired image-to-image translation (CT -> MRI), chosen by name like CUT's ``--model`` option.

``networks.py`` (generators, PatchGAN, CUT's MLP heads), ``losses.py`` (LSGAN, image pool, PatchNCE), ``base.py``
(the interface the trainer uses), and one file per method: ``cyclegan.py``, ``cut.py``; ``oracles.py`` holds fixed
stand-ins for one, for diagnostics.
"""
from nnunet_cmedl.i2i.base import GeneratorPass, I2IMethod
from nnunet_cmedl.i2i.cascade import image_channels_only
from nnunet_cmedl.i2i.cut import CUT
from nnunet_cmedl.i2i.cyclegan import CycleGAN
from nnunet_cmedl.i2i.oracles import NoTranslation, PairedOracle

# "paired_oracle" and "no_translation" are diagnostics, not translations (oracles.py)
I2I_METHODS = {"cyclegan": CycleGAN, "cut": CUT, "paired_oracle": PairedOracle, "no_translation": NoTranslation}
__all__ = ["CUT", "CycleGAN", "GeneratorPass", "I2IMethod", "I2I_METHODS", "build_i2i"]


def build_i2i(method: str, arch, **kwargs) -> I2IMethod:
    """The I2I method by name; on a cascade's configuration (``arch.image_channels``: fewer image channels than
    ``ct_channels``) one that translates the image channels only (cascade.py)."""
    if method not in I2I_METHODS:
        raise ValueError(f"unknown I2I method {method!r}; choose one of {sorted(I2I_METHODS)}")
    cls = I2I_METHODS[method]
    if arch.image_channels is not None and kwargs.get("ct_channels", arch.image_channels) > arch.image_channels:
        cls = image_channels_only(cls)
    return cls(arch, **kwargs)
