"""Loading checkpoints without running their code: ``torch.load(weights_only=True)``.

nnU-Net's and CMEDL's checkpoints hold tensors, numbers, text, and numpy scalars and arrays (nnU-Net logs numpy
floats; CMEDL saves numpy's random state). Those numpy data types are allowed; any other Python object in a file
(unpickling it may run arbitrary code) is refused with one line unless the caller trusts the file
(``--trust-checkpoint``), which loads it as nnU-Net does (``weights_only=False``).
"""
import re

from nnunet_cmedl.errors import UserInputError, first_line

TRUST_FLAG = "--trust-checkpoint"


def numpy_data_types() -> list:
    """The numpy globals a checkpoint of numbers needs: scalars, arrays and their dtypes."""
    import numpy as np
    return [np._core.multiarray.scalar, np._core.multiarray._reconstruct, np.ndarray, np.dtype] + \
        [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def load_checkpoint(path, map_location="cpu", trust: bool = False):
    """The checkpoint at ``path``; UserInputError (naming the file) if it is unreadable, or if it needs more than
    tensors, numbers, text and numpy data and ``trust`` is False."""
    import torch
    try:
        with torch.serialization.safe_globals(numpy_data_types()):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserInputError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises many kinds for a damaged file (pickle, zip, EOF, runtime)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe is None:
            raise UserInputError(f"{path}: cannot load the checkpoint ({type(e).__name__}: "
                                 f"{first_line(e)})") from None
        if not trust:
            raise UserInputError(f"{path}: holds Python objects other than tensors, numbers and text (first: "
                                 f"{unsafe.group(1)}); loading it could run code: pass {TRUST_FLAG} only if you "
                                 f"trust where it came from") from None
    try:
        return torch.load(str(path), map_location=map_location, weights_only=False)
    except Exception as e:
        raise UserInputError(f"{path}: cannot load the checkpoint ({type(e).__name__}: {first_line(e)})") from None
