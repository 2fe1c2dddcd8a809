"""Load every inference-time part of a trained CMEDL model from nnU-Net's results folder.

A CMEDL checkpoint is a stock nnU-Net checkpoint (``network_weights`` = the student, on CT) plus the teacher
(``cmedl_teacher_weights``, on pseudo-MRI) and the CycleGAN (``cmedl_i2i_weights``, whose ``ct_to_mri`` generator
makes the pseudo-MRI). The networks are rebuilt the way ``nnUNetv2_predict`` rebuilds the student: from the results
folder's plans.json with the trainer class's static ``build_network_architecture``.
"""
import contextlib
import io
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from nnunet_cmedl.checkpoint_io import TRUST_FLAG, load_checkpoint
from nnunet_cmedl.env import resolve_device
from nnunet_cmedl.errors import UserInputError, first_line


@dataclass
class CMEDLModel:
    """The parts of a trained CMEDL model that inference needs; every network is in eval mode on ``device``."""
    model_folder: Path
    checkpoint_file: Path
    fold: Union[int, str]
    trainer_name: str
    configuration_name: str
    plans_manager: object                 # nnunetv2 PlansManager
    configuration_manager: object         # nnunetv2 ConfigurationManager
    dataset_json: dict
    label_manager: object                 # nnunetv2 LabelManager
    generator: nn.Module                  # the I2I method's ct_to_mri: CT (preprocessed) -> pMRI (z-score scale)
    teacher: nn.Module                    # nnU-Net network on pMRI
    student: nn.Module                    # nnU-Net network on CT (what stock nnUNetv2_predict runs)
    num_input_channels: int               # CT channels
    inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]
    device: torch.device
    i2i_kwargs: dict = field(default_factory=dict)
    modalities: Tuple[str, str] = ("CT", "MRI")  # (labelled, unpaired), as training found them (checkpoint)

    @property
    def patch_size(self) -> Tuple[int, ...]:
        return tuple(self.configuration_manager.patch_size)

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def num_segmentation_heads(self) -> int:
        return self.label_manager.num_segmentation_heads


def _strip_prefixes(state_dict: dict) -> dict:
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def find_trainer_class(trainer_name: str):
    """The trainer class by name: nnunet-cmedl's own trainers first (no nnUNet_extTrainer needed), then nnU-Net's
    lookup (its own trainers and the nnUNet_extTrainer folders); None if neither knows it."""
    from nnunet_cmedl import training
    from nnunet_cmedl.training import variants
    for module in (training, variants):
        cls = getattr(module, trainer_name, None)
        if inspect.isclass(cls):
            return cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the lookup narrates its search
            return recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, AssertionError, ImportError):
        return None


def _build(trainer_class, plans_manager, configuration_manager, in_channels: int, out_channels: int) -> nn.Module:
    return trainer_class.build_network_architecture(plans_manager, configuration_manager, in_channels, out_channels,
                                                    enable_deep_supervision=False)


def _load_weights(network: nn.Module, state_dict: dict, what: str, checkpoint_file: Path) -> None:
    try:
        network.load_state_dict(_strip_prefixes(state_dict), strict=True)
    except RuntimeError as e:
        first = first_line(e)
        raise UserInputError(f"{checkpoint_file}: the {what} weights do not fit the network built from the results "
                             f"folder's plans.json ({first})") from None


def load_cmedl_model(model_folder, fold: Union[int, str] = 0, checkpoint_name: str = "checkpoint_final.pth",
                     device: Union[str, torch.device] = "cpu", trust_checkpoint: bool = False) -> CMEDLModel:
    """Load generator, teacher and student of a CMEDL model from ``{trainer}__{plans}__{configuration}``
    (``trust_checkpoint``: also a checkpoint that holds arbitrary Python objects, see checkpoint_io)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_cmedl.i2i import build_i2i
    from nnunet_cmedl.i2i.networks import I2IArchitecture
    from nnunet_cmedl.i2i.cascade import previous_stage_channels

    model_folder = Path(model_folder)
    device = resolve_device(device)
    if not model_folder.is_dir():
        raise UserInputError(f"{model_folder}: model folder not found (expected nnU-Net's results folder "
                             f"{{trainer}}__{{plans}}__{{configuration}})")
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            hint = (" (this looks like a fold folder: pass its parent)" if model_folder.name.startswith("fold_")
                    else " (expected nnU-Net's results folder {trainer}__{plans}__{configuration})")
            raise UserInputError(f"{model_folder / name}: not found{hint}")
    fold = fold if fold == "all" else int(fold)
    checkpoint_file = model_folder / f"fold_{fold}" / checkpoint_name
    if not checkpoint_file.is_file():
        available = sorted(p.name for p in model_folder.glob("fold_*/*.pth"))
        raise UserInputError(f"{checkpoint_file}: checkpoint not found"
                             + (f" (checkpoints there: {', '.join(sorted(set(available)))})" if available else ""))
    checkpoint = load_checkpoint(checkpoint_file, trust=trust_checkpoint)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UserInputError(f"{checkpoint_file}: not an nnU-Net checkpoint (no network_weights)")
    trainer_name = checkpoint.get("trainer_name", "an unknown trainer")
    if "cmedl_i2i_weights" not in checkpoint or "cmedl_teacher_weights" not in checkpoint:
        raise UserInputError(f"{checkpoint_file}: not a CMEDL checkpoint (no cmedl_i2i_weights / "
                             f"cmedl_teacher_weights); it was written by {trainer_name}")

    try:
        plans_manager = PlansManager(load_json(str(model_folder / "plans.json")))
        dataset_json = load_json(str(model_folder / "dataset.json"))
    except ValueError as e:
        raise UserInputError(f"{model_folder}: plans.json or dataset.json is not valid JSON ({e})") from None
    configuration_name = checkpoint["init_args"]["configuration"]
    if configuration_name not in plans_manager.available_configurations:
        raise UserInputError(f"{model_folder / 'plans.json'}: has no configuration {configuration_name!r}, which "
                             f"{checkpoint_file} was trained with")
    configuration_manager = plans_manager.get_configuration(configuration_name)
    label_manager = plans_manager.get_label_manager(dataset_json)
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_heads = label_manager.num_segmentation_heads

    trainer_class = find_trainer_class(trainer_name)
    if trainer_class is None:
        from nnunet_cmedl.training import nnUNetTrainerCMEDL
        print(f"warning: trainer {trainer_name} (from {checkpoint_file}) not found; building its networks like "
              f"nnUNetTrainerCMEDL does (set nnUNet_extTrainer if it lives elsewhere)", file=sys.stderr)
        trainer_class = nnUNetTrainerCMEDL

    i2i_kwargs = dict(checkpoint.get("cmedl_i2i_kwargs") or {})
    i2i_kwargs.setdefault("ct_channels", num_input_channels)
    mri_channels = int(i2i_kwargs.get("mri_channels", 1))

    student = _build(trainer_class, plans_manager, configuration_manager, num_input_channels, num_heads)
    _load_weights(student, checkpoint["network_weights"], "student (network_weights)", checkpoint_file)
    teacher = _build(trainer_class, plans_manager, configuration_manager,  # cascade: + the previous stage's channels
                     mri_channels + previous_stage_channels(configuration_manager, num_input_channels), num_heads)
    _load_weights(teacher, checkpoint["cmedl_teacher_weights"], "teacher (cmedl_teacher_weights)", checkpoint_file)
    i2i = build_i2i(checkpoint.get("cmedl_i2i_method", "cyclegan"),
                    I2IArchitecture.from_configuration(configuration_manager), **i2i_kwargs)
    _load_weights(i2i, checkpoint["cmedl_i2i_weights"], "I2I (cmedl_i2i_weights)", checkpoint_file)
    generator = i2i.generator
    del i2i, checkpoint["cmedl_i2i_weights"]  # the other networks of the I2I method are training-only

    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    return CMEDLModel(
        model_folder=model_folder, checkpoint_file=checkpoint_file, fold=fold, trainer_name=trainer_name,
        configuration_name=configuration_name, plans_manager=plans_manager,
        configuration_manager=configuration_manager, dataset_json=dataset_json, label_manager=label_manager,
        generator=generator.to(device).eval(), teacher=teacher.to(device).eval(), student=student.to(device).eval(),
        num_input_channels=num_input_channels,
        inference_allowed_mirroring_axes=tuple(mirror_axes) if mirror_axes is not None else None,
        device=device, i2i_kwargs=i2i_kwargs, modalities=tuple(checkpoint.get("cmedl_modalities", ("CT", "MRI"))))


def add_model_arguments(parser) -> None:
    """The options that pick a trained CMEDL model and how it runs (shared by export-pmri and panels)."""
    parser.add_argument("-m", "--model", required=True, metavar="MODEL_FOLDER",
                        help="nnU-Net results folder of the CMEDL model: .../DatasetXXX/{trainer}__{plans}__{configuration}")
    parser.add_argument("-f", "--fold", default="0", help="fold to use (0-4 or all; default 0)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in fold_X")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help="also load a checkpoint that holds Python objects other than tensors, numbers and text "
                             "(unpickling them may run code): only for files from a source you trust")


def model_from_arguments(args) -> "CMEDLModel":
    if not 0 < args.step_size <= 1:
        raise UserInputError(f"--step-size {args.step_size}: must be in (0, 1]")
    if args.fold != "all" and not args.fold.isdigit():
        raise UserInputError(f"-f {args.fold}: a fold number or 'all'")
    return load_cmedl_model(args.model, args.fold, args.checkpoint, args.device, args.trust_checkpoint)
