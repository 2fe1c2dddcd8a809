"""How far a CMEDL run's student is from its teacher on the cases it trained on, and on cases it did not (issue 8).

CMEDL's hint (L_hint: the mean squared difference of the last decoder stages' features, the student on CT against
the teacher on G(CT)) is computed in training on the labelled training cases only. This measures it, at the final
checkpoint, on the fold's training cases and on its validation cases: for the run's own student, and for the
students of other runs given with ``--students`` (plain nnU-Net at the same seed, say: how close a student comes
to that teacher without any hint). A hint that carries the teacher's knowledge should bring the student closer on
the validation cases too, not only on the cases it was matched on.

Measured on whole 2d slices that hold foreground (unaugmented, zero-padded to the network's divisibility), over all
voxels (as the hint is computed) and over the foreground (tumour) voxels only, at the decoder stages CMEDL hints
(-2, -1), without normalisation (CMEDL's). 2d configurations only.

    python scripts/hint_distance.py -m RESULTS/Dataset/TRAINER__PLANS__CONFIG [-f 0] \\
        [--students plain=RESULTS/Dataset/nnUNetTrainer__PLANS__CONFIG ...] [--out hint_distance.json]
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REGIONS = ("all", "foreground")  # every voxel (the hint as CMEDL computes it), or the labelled foreground only


def counts(logits: torch.Tensor, mask: torch.Tensor) -> tuple:
    """(true positives, predicted, labelled) foreground voxels: a (1, classes, ...) logit map, a (1, 1, ...) mask."""
    predicted = logits.argmax(1, keepdim=True) > 0
    return int((predicted & mask).sum()), int(predicted.sum()), int(mask.sum())


def dice(counts_list) -> float:
    tp, predicted, labelled = np.sum(np.array(counts_list), axis=0)
    return float(2 * tp / max(predicted + labelled, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", type=Path, required=True,
                   help="a CMEDL run's results folder (TRAINER__PLANS__CONFIG)")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("--students", nargs="*", default=[], metavar="NAME=FOLDER",
                   help="other runs (same plans and configuration) whose final student is measured against this "
                        "run's teacher")
    p.add_argument("--stages", type=int, nargs="+", default=[-2, -1], help="decoder stages (default: -2 -1)")
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    a = p.parse_args(argv)

    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_cmedl.checkpoint_io import load_checkpoint
    from nnunet_cmedl.distillation.hint import DecoderFeatureTap, hint_loss
    from nnunet_cmedl.errors import UserInputError
    from nnunet_cmedl.inference.cmedl_model import load_cmedl_model

    try:
        model = load_cmedl_model(a.model, fold=a.fold, device=torch.device("cpu"), trust_checkpoint=True)
        if not model.is_2d:
            raise UserInputError(f"{a.model}: a {len(model.patch_size)}d configuration; hint_distance.py measures "
                                 f"2d configurations only")
        students = {"own student": model.student}
        for spec in a.students:
            name, _, folder = spec.partition("=")
            ckpt = Path(folder) / f"fold_{a.fold}" / "checkpoint_final.pth"
            if not ckpt.is_file():
                raise UserInputError(f"{ckpt}: no final checkpoint (--students {spec})")
            net = copy.deepcopy(model.student)
            net.load_state_dict(load_checkpoint(ckpt, map_location="cpu", trust=True)["network_weights"])
            students[name] = net.eval()
    except UserInputError as e:
        print(f"hint_distance.py: {e}", file=sys.stderr)
        return 2

    dataset = model.plans_manager.dataset_name
    pre = Path(nnUNet_preprocessed) / dataset
    split = load_json(str(pre / "splits_final.json"))[a.fold]
    folder = str(pre / model.configuration_manager.data_identifier)
    strides = np.prod(np.array(model.configuration_manager.network_arch_init_kwargs["strides"]), axis=0)
    teacher = DecoderFeatureTap(model.teacher, a.stages).eval()
    teacher_head = teacher.network.decoder.seg_layers[-1]  # the teacher's 1x1 conv on its last decoder stage
    taps = {name: DecoderFeatureTap(net, a.stages).eval() for name, net in students.items()}
    results = {}
    for part in ("train", "val"):
        cases = infer_dataset_class(folder)(folder, split[part])
        per_case = {(name, region): [] for name in taps for region in REGIONS}
        overlap = {("teacher", "own head"): [], **{(name, head): [] for name in taps
                                                   for head in ("own head", "teacher's head")}}
        for case in split[part]:
            data, seg = (np.asarray(v[:]) for v in cases.load_case(case)[:2])
            slices = [z for z in range(data.shape[1]) if (seg[:, z] > 0).any()]
            distances = {(name, region): [] for name in taps for region in REGIONS}
            for z in slices:
                x = torch.from_numpy(np.ascontiguousarray(data[:, z], dtype=np.float32))[None]
                mask = torch.from_numpy(np.ascontiguousarray(seg[:1, z] > 0))[None]
                pad = [(-s) % int(d) for s, d in zip(x.shape[2:], strides)]
                x = torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]))
                mask = torch.nn.functional.pad(mask, (0, pad[1], 0, pad[0]))
                with torch.no_grad():
                    teacher_output, target = teacher(model.generator(x))
                    overlap["teacher", "own head"].append(counts(teacher_output, mask))
                    for name, tap in taps.items():
                        output, features = tap(x)
                        distances[name, "all"].append(float(hint_loss(features, target)))
                        distances[name, "foreground"].append(float(hint_loss(features, target, mask=mask)))
                        overlap[name, "own head"].append(counts(output, mask))
                        overlap[name, "teacher's head"].append(counts(teacher_head(features[-1]), mask))
            for key, values in distances.items():
                if values:
                    per_case[key].append(float(np.mean(values)))
        results[part] = {f"{name} / {region}": {"mean": float(np.mean(per_case[name, region])),
                                                "cases": len(per_case[name, region])}
                         for name in taps for region in REGIONS}
        results[part]["dice"] = {f"{name} / {head}": dice(v) for (name, head), v in overlap.items()}
    print(f"hint distance to the teacher of {a.model.name} (fold {a.fold}, decoder stages {a.stages}; mean over "
          f"cases of the mean over slices with foreground; all voxels, or the foreground voxels only)")
    print(f"{'student / voxels':36s} {'training cases':>15s} {'validation cases':>17s}")
    for key in results["train"]:
        if key != "dice":
            print(f"{key:36s} {results['train'][key]['mean']:15.4f} {results['val'][key]['mean']:17.4f}")
    print("\nDice of the foreground on the same slices (pooled over them), each network's own segmentation head, and "
          "the teacher's head on the student's last decoder features")
    for key in results["train"]["dice"]:
        print(f"{key:36s} {results['train']['dice'][key]:15.4f} {results['val']['dice'][key]:17.4f}")
    if a.out:
        a.out.write_text(json.dumps({"model": str(a.model), "fold": a.fold, "stages": a.stages, **results},
                                    indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
