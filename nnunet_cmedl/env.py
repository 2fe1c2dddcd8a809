"""``nnunet_cmedl env``: print the shell line that lets stock nnU-Net commands find nnunet-cmedl's trainers."""
import argparse
import os
import shlex
from contextlib import contextmanager

from mri_unpaired.nnunet_env import check_nnunet_version

ENV_VAR = "nnUNet_extTrainer"


def resolve_device(device):
    """'auto' (CUDA where available, else the CPU), 'cpu', 'cuda' or a torch.device -> a usable torch.device."""
    import torch
    from nnunet_cmedl.errors import UserInputError
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserInputError(f"device {device!r}: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device cuda: no CUDA GPU is available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"device {device}: use auto, cpu or cuda")
    return device


def ext_trainer_folder() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


@contextmanager
def trainers_visible_to_nnunet():
    """Within this context nnU-Net's trainer lookup (in this process) also searches our trainers."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ext_trainer_value(old)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def ext_trainer_value(existing: str | None) -> str:
    """Our folder prepended to an existing value (kept as it is, without a duplicate of ours)."""
    ours = ext_trainer_folder()
    others = [p for p in (existing or "").split(os.pathsep) if p and os.path.abspath(p) != ours]
    return os.pathsep.join([ours, *others])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl env",
        description="Print the line that points nnU-Net's external-trainer lookup (nnUNet_extTrainer, nnunetv2>=2.8) "
                    "at nnunet-cmedl's trainers, so that `nnUNetv2_train ... -tr nnUNetTrainerCMEDL` and "
                    "`nnUNetv2_predict ... -tr nnUNetTrainerCMEDL` work. Any existing value of the variable is kept. "
                    "Use it as: eval \"$(nnunet_cmedl env)\"")
    p.add_argument("--check", action="store_true",
                   help="instead of printing, exit 1 with a message if nnUNet_extTrainer does not include our folder")
    args = p.parse_args(argv)
    check_nnunet_version()
    current = os.environ.get(ENV_VAR)
    if args.check:
        listed = [os.path.abspath(x) for x in (current or "").split(os.pathsep) if x]
        if ext_trainer_folder() not in listed:
            print(f"{ENV_VAR} is {'not set' if not current else repr(current)} and does not list "
                  f"{ext_trainer_folder()}; run: eval \"$(nnunet_cmedl env)\"")
            return 1
        print(f"{ENV_VAR} lists {ext_trainer_folder()}")
        return 0
    print(f"export {ENV_VAR}={shlex.quote(ext_trainer_value(current))}")
    return 0
