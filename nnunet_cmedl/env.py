"""``nnunet_cmedl env``: print the shell line that lets stock nnU-Net commands find nnunet-cmedl's trainers."""
import argparse
import os
import shlex

from nnunet_cmedl.utils.nnunet_env import check_nnunet_version

ENV_VAR = "nnUNet_extTrainer"


def ext_trainer_folder() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


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
