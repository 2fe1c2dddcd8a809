"""``nnunet_cmedl make-synthetic``: write the synthetic thorax dataset (nnU-Net raw layout; labelled CT, or labelled
MRI with ``--labelled-modality MRI``) + the unpaired volumes of the other modality."""
import argparse
import json
import os
from pathlib import Path

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.synthetic.phantom import HARD_CT_SIGNALS

DESCRIPTION = """\
Write a synthetic thorax CT dataset in nnU-Net's raw layout, plus unpaired T2w-like MRI volumes of other patients.

The data is built so that CMEDL has something to show. Each CT case has 1-3 tumours:
  easy  ("lung")        in the lung parenchyma, ~35 HU against ~-800 HU lung;
  hard  ("mediastinal") abutting the mediastinum with a mean within 4 HU of it, its lung side against
                        collapsed lung (atelectasis) and half of them against a vessel, all of nearly the same HU:
                        the CT boundary is ambiguous, only a faint internal texture (a few HU) remains; with
                        --hard-ct-signal enhancing-atelectasis (default) the collapsed lung enhances 10-25 HU
                        more than the tumour (about one noise sd): a subtle edge on the lung side only.
Every case has at least one hard tumour; about half of all tumours are hard. In the MRI (different patients,
own grid, bias field, Rician noise) tumours are bright against an intermediate mediastinum and collapsed lung.
phantom_metadata.json lists every tumour (location, size, measured CT contrast, neighbours) for an easy/hard
evaluation; preview.png shows CT and MRI slices. Same arguments give bit-identical volumes.

--labelled-modality MRI turns it round (the paper's "weak teacher" setting): the labelled cases are T2w-like MRI
(channel "T2w", z-score normalised by nnU-Net) and the unpaired volumes are CT of other patients (unpairedCT/), which
`nnunet_cmedl preprocess-unpaired --modality CT` normalises with nnU-Net's CT scheme and the set's own statistics.
dataset.json names the unpaired modality ("unpaired_modality"), so preprocess-unpaired can read it from there.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_cmedl make-synthetic", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", help="nnU-Net raw data root to write DatasetNNN_<name> into (default: $nnUNet_raw)")
    p.add_argument("-d", "--dataset-id", type=int, default=501, help="nnU-Net dataset id (default: 501)")
    p.add_argument("--name", default="CMEDLThorax", help="dataset name (default: CMEDLThorax)")
    p.add_argument("--num-train", type=int, default=12, help="labelled training cases, imagesTr/labelsTr (default: 12)")
    p.add_argument("--num-test", type=int, default=8, help="labelled test cases, imagesTs/labelsTs (default: 8)")
    p.add_argument("--labelled-modality", type=str.upper, choices=("CT", "MRI"), default="CT",
                   help="modality of the labelled cases; the unpaired volumes are the other one (default: CT)")
    p.add_argument("--num-unpaired", "--num-mri", dest="num_unpaired", type=int, default=12,
                   help="unpaired volumes of the other modality (default: 12)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=(32, 96, 128),
                   help="CT grid in voxels (default: 32 96 128)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="CT spacing in mm (default: the spacing that makes --shape cover 160 x 288 x 384 mm, "
                        "i.e. 5 3 3 for the default shape); the MRI gets 0.8x the slice and 2/3 the in-plane spacing")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--unpaired-out", "--mri-out", dest="unpaired_out",
                   help="folder for the unpaired volumes (default: <dataset folder>/unpairedMRI, or unpairedCT with "
                        "--labelled-modality MRI)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (and unpaired) folder that make-synthetic wrote")
    p.add_argument("--hard-ct-signal", choices=HARD_CT_SIGNALS, default=HARD_CT_SIGNALS[0],
                   help="what sets hard tumours apart in CT besides a faint texture (default: %(default)s)")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    args = p.parse_args(argv)

    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise UserInputError("--raw: not given and environment variable nnUNet_raw is not set; pass --raw PATH or "
                             "export nnUNet_raw=/path/to/nnUNet_raw")
    from nnunet_cmedl.synthetic.dataset import make_synthetic_dataset
    paths = make_synthetic_dataset(
        raw, dataset_id=args.dataset_id, dataset_name=args.name, num_train=args.num_train, num_test=args.num_test,
        num_unpaired=args.num_unpaired, ct_shape=tuple(args.shape), seed=args.seed, overwrite=args.overwrite,
        unpaired_folder=args.unpaired_out, preview=not args.no_preview, show_progress=True, ct_spacing=args.spacing,
        hard_ct_signal=args.hard_ct_signal, labelled_modality=args.labelled_modality)

    summary = json.loads(Path(paths.metadata_json).read_text())["summary"]
    hard = summary["hard_abs_ct_contrast_vs_mediastinum_hu"]
    easy = summary["easy_abs_ct_contrast_vs_lung_hu"]
    print(f"dataset (nnU-Net raw): {paths.dataset_folder}  ({args.num_train} training, {args.num_test} test "
          f"{paths.labelled_modality} cases)")
    print(f"unpaired {paths.unpaired_modality} (no labels): {paths.unpaired_folder}  ({args.num_unpaired} volumes)")
    print(f"tumour metadata: {paths.metadata_json}")
    if paths.preview_png:
        print(f"preview: {paths.preview_png}")
    line = f"tumours: {summary['hard_tumours']} hard (mediastinal), {summary['easy_tumours']} easy (lung)"
    if hard:
        line += f"; hard |CT contrast vs mediastinum| mean {hard['mean']:.1f} HU (max {hard['max']:.1f})"
    if easy:
        line += f"; easy |CT contrast vs lung| mean {easy['mean']:.0f} HU"
    print(line)
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.dataset_id} (with nnUNet_raw pointing at the raw root), then "
          f"nnunet_cmedl preprocess-unpaired -d {args.dataset_id} -c CONFIGURATION -i {paths.unpaired_folder}")
    return 0
