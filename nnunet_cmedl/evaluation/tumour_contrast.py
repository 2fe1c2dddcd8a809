"""``nnunet_cmedl tumour-contrast``: does the pseudo-MRI show the tumours better than the CT? (CMEDL's premise)

CMEDL can teach a CT network only what its teacher sees on the pseudo-MRI (pMRI): where the generator does not
render a tumour, the teacher cannot find it, and the hint has nothing to pass on (issue 8, docs/BENCHMARK.md). This
measures, per tumour of the reference labels, how well each image's intensities set the tumour apart from the tissue
around it, in the CT, in one or more pMRIs (``nnunet_cmedl export-pmri`` writes them), and, where there is one, in
the patient's own MRI (registered onto the CT, or the phantom's, which ``make-synthetic`` datasets have):

- ``auc``: the probability that a voxel of the tumour and one of its ring (the voxels within ``ring_mm`` outside the
  tumour that belong to no labelled structure) are ordered by intensity the way the two means are (Mann-Whitney AUC,
  taken as max(A, 1 - A)): 0.5 = the tumour cannot be told from its surroundings by intensity, 1.0 = every tumour
  voxel is brighter (or every one darker) than every ring voxel. Free of units, so CT, pMRI and MRI compare.
- ``cnr``: (tumour mean - ring mean) / ring standard deviation, signed, in the image's own units.

A generator that renders the tumours gives pMRI AUCs near the MRI's and, for tumours the CT hardly shows (CMEDL's
case: next to the mediastinum), above the CT's. A pMRI whose AUCs sit at the CT's or below adds nothing a CT network
could not see itself. The summary gives, per kind of tumour (hard / easy with ``--phantom-metadata``, else all),
each image's mean AUC and, per pMRI, its difference to the CT and to the MRI over the same tumours with a paired
Wilcoxon test. Writes OUT_PREFIX.csv (one row per tumour), OUT_PREFIX.json and OUT_PREFIX.png.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from scipy import ndimage, stats

from mri_unpaired.atomic import exclusive_output
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.metrics import check_geometry, read_image, read_label_image
from nnunet_cmedl.evaluation.tables import (fmt, format_table, refuse_existing_outputs,
                                            strip_output_prefix, write_csv, write_json)

CT, MRI = "CT", "MRI"
MIN_TUMOUR_VOXELS = 5     # smaller components of a user's labels are not scored (too few voxels for an AUC)
MIN_RING_VOXELS = 10
DEFAULT_RING_MM = 3.0     # or the smallest voxel spacing where that is wider (the ring holds the nearest voxels)


def read_intensities(path: Path):
    """(float32 array in SimpleITK order z, y, x; geometry as read_label_image gives it)."""
    arr, geom = read_image(path)
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise UserInputError(f"{path}: holds NaN or infinite values")
    return arr, geom


def separation(values_in: np.ndarray, values_ring: np.ndarray) -> dict:
    """AUC (max(A, 1 - A), Mann-Whitney) and signed CNR of tumour voxels against ring voxels."""
    u = stats.mannwhitneyu(values_in, values_ring, alternative="two-sided").statistic
    a = float(u) / (values_in.size * values_ring.size)
    sd = float(values_ring.std())
    cnr = (float(values_in.mean()) - float(values_ring.mean())) / sd if sd > 0 else float("nan")
    return {"auc": max(a, 1.0 - a), "cnr": cnr}


def ring_width(ring_mm: Optional[float], spacing) -> float:
    return ring_mm if ring_mm is not None else max(DEFAULT_RING_MM, min(spacing))


def ring_of(mask: np.ndarray, labelled: np.ndarray, spacing_zyx, ring_mm: float, gap_mm: float = 0.0) -> np.ndarray:
    """Voxels farther than gap_mm and at most gap_mm + ring_mm outside the tumour that belong to no labelled
    structure (a gap leaves out the tumour's border, where a blurred image mixes tumour and surroundings)."""
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    return (distance > gap_mm) & (distance <= gap_mm + ring_mm) & ~labelled


def padded_box(mask: np.ndarray, spacing_zyx, margin_mm: float) -> tuple:
    """The slices of ``mask``'s bounding box widened by ``margin_mm`` (and one voxel) on every side, within the
    image: a ring of width gap + ring computed in this box is the ring of the whole image (every voxel within that
    distance of the tumour lies in the box), at the cost of the box, not of the image (a CT of 512 x 512 x 300)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice, pad_bbox
    box = [[s.start, s.stop] for s in ndimage.find_objects(mask.astype(np.uint8))[0]]  # any dimension (2d too)
    return bounding_box_to_slice(pad_bbox(box, [int(np.ceil(margin_mm / sp)) + 1 for sp in spacing_zyx], mask.shape))


# ---------------------------------------------------------------------------------------------- the tumours
def phantom_tumours(labels: Path, metadata_path: Path):
    """(case, reference path, geometry, {'id', 'difficulty'}, mask, labelled) for each test tumour of a phantom."""
    from nnunet_cmedl.evaluation.per_tumour import load_metadata, each_test_tumour
    for case, ref_path, geom, tumour, mask, labelled in each_test_tumour(labels, load_metadata(metadata_path)):
        yield case, ref_path, geom, {"id": tumour["id"], "difficulty": tumour["difficulty"]}, mask, labelled


def label_tumours(labels: Path, label: Optional[int], file_ending: str):
    """The same for any labels: each connected component of ``label`` (any foreground if None), kind 'all'."""
    files = sorted(p for p in labels.iterdir() if p.is_file() and p.name.endswith(file_ending)
                   and not p.name.startswith("."))
    if not files:
        raise UserInputError(f"{labels}: no {file_ending} label images in this folder")
    for ref_path in files:
        ref, geom = read_label_image(ref_path)
        labelled = ref > 0
        components, n = ndimage.label(labelled if label is None else ref == label)
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        for index in range(1, n + 1):
            if sizes[index] >= MIN_TUMOUR_VOXELS:
                yield (ref_path.name[:-len(file_ending)], ref_path, geom, {"id": index, "difficulty": "all"},
                       components == index, labelled)


def _image_of(folder: Path, case: str, suffixes, file_ending: str, what: str) -> Path:
    for suffix in suffixes:
        path = folder / f"{case}{suffix}{file_ending}"
        if path.is_file():
            return path
    raise UserInputError(f"{folder / (case + suffixes[0] + file_ending)}: no {what} for case {case} (looked for "
                         f"{', '.join(case + s + file_ending for s in suffixes)})")


# ---------------------------------------------------------------------------------------------- measuring
def measure(labels, ct_folder, pmri: Dict[str, Path], *, mri_folder=None, phantom_metadata=None, label=None,
            ring_mm: Optional[float] = None, file_ending: str = ".nii.gz", gap_mm: float = 0.0,
            on_tumour=None, show_progress: bool = False) -> List[dict]:
    """One row per tumour: case, tumour, difficulty, voxels, ring voxels, and ``<image>_auc`` / ``<image>_cnr`` for
    the CT, each pMRI (by its name) and the MRI (the folder's, or the phantom's own with ``mri_folder='phantom'``).
    ``on_tumour(row, images, mask, spacing_zyx)``, if given, is called for each measured tumour."""
    labels, ct_folder = Path(labels), Path(ct_folder)
    for folder, what in [(labels, "--labels"), (ct_folder, "--ct")] + [(Path(f), f"--pmri {n}") for n, f in
                                                                      pmri.items()]:
        if not folder.is_dir():
            raise UserInputError(f"{folder}: {what} is not a folder")
    tumours = (phantom_tumours(labels, Path(phantom_metadata)) if phantom_metadata is not None
               else label_tumours(labels, label, file_ending))
    phantom_mri = None
    if mri_folder == "phantom":
        if phantom_metadata is None:
            raise UserInputError("--mri phantom: needs --phantom-metadata (the phantom renders each patient's MRI)")
        from nnunet_cmedl.synthetic.paired_mri import phantom_settings
        phantom_mri = phantom_settings(Path(phantom_metadata).parent)
    from tqdm import tqdm
    boxed = []  # each tumour and its ring in a box around it, so that every file is found before any image is read
    for case, ref_path, geom, tumour, mask, labelled in tumours:
        spacing = tuple(reversed(geom["spacing"]))
        width = ring_width(ring_mm, spacing)
        box = padded_box(mask, spacing, gap_mm + width)
        ring = ring_of(mask[box], labelled[box], spacing, width, gap_mm)
        boxed.append((case, ref_path, geom, tumour, box, mask[box], ring))
    paths_of = {case: _case_paths(case, ct_folder, pmri, mri_folder, file_ending) for case, *_ in boxed}
    rows, images_of = [], {}
    for case, ref_path, geom, tumour, box, mask, ring in tqdm(boxed, desc="tumours", unit="tumour",
                                                              disable=not show_progress):
        if case not in images_of:
            images_of.clear()  # one case's images in memory at a time
            images_of[case] = _read_case_images(case, ref_path, geom, paths_of[case], phantom_mri)
        if ring.sum() < MIN_RING_VOXELS:
            continue  # no surroundings to compare with (a tumour surrounded by other labels)
        row = {"case": case, "tumour": tumour["id"], "difficulty": tumour["difficulty"],
               "tumour_voxels": int(mask.sum()), "ring_voxels": int(ring.sum())}
        for name, image in images_of[case].items():
            s = separation(image[box][mask], image[box][ring])
            row[f"{name}_auc"], row[f"{name}_cnr"] = s["auc"], s["cnr"]
        rows.append(row)
        if on_tumour is not None:
            whole = np.zeros(images_of[case][CT].shape, bool)
            whole[box] = mask
            on_tumour(row, images_of[case], whole, tuple(reversed(geom["spacing"])))
    if not rows:
        raise UserInputError(f"{labels}: no tumour found to measure (labels"
                             f"{' of phantom_metadata.json test cases' if phantom_metadata else ''})")
    return rows


def _case_paths(case, ct_folder, pmri, mri_folder, file_ending) -> dict:
    paths = {CT: _image_of(ct_folder, case, ("_0000", ""), file_ending, "CT")}
    for name, folder in pmri.items():
        paths[name] = _image_of(Path(folder), case, ("_pMRI",), file_ending, f"pMRI ({name})")
    if mri_folder not in (None, "phantom"):
        paths[MRI] = _image_of(Path(mri_folder), case, ("", "_0000"), file_ending, "registered MRI")
    return paths


def _read_case_images(case, ref_path, geom, paths, phantom_mri) -> dict:
    images = {}
    for name, path in paths.items():
        images[name], image_geom = read_intensities(path)
        check_geometry(geom, image_geom, ref_path, path)
    if phantom_mri is not None:
        from nnunet_cmedl.synthetic.paired_mri import render_paired_mri
        images[MRI] = render_paired_mri(phantom_mri, case).astype(np.float32)
        if images[MRI].shape != images[CT].shape:
            raise UserInputError(f"{ref_path}: shape {images[CT].shape} is not the phantom's grid "
                                 f"{images[MRI].shape}: not a case of this phantom")
    return images


# ---------------------------------------------------------------------------------------------- summary
def image_names(rows: List[dict]) -> List[str]:
    return [k[:-len("_auc")] for k in rows[0] if k.endswith("_auc")]


def _paired(rows: List[dict], a: str, b: str) -> dict:
    x = np.array([r[f"{a}_auc"] for r in rows])
    y = np.array([r[f"{b}_auc"] for r in rows])
    d = x - y
    p = float(stats.wilcoxon(x, y).pvalue) if len(d) >= 2 and np.any(d != 0) else float("nan")
    return {"mean_difference": float(d.mean()), "n_higher": int((d > 0).sum()), "n": int(d.size), "p_wilcoxon": p}


def summarise(rows: List[dict], pmri_names: List[str]) -> dict:
    names = image_names(rows)
    kinds = sorted({r["difficulty"] for r in rows}) + (["all"] if len({r["difficulty"] for r in rows}) > 1 else [])
    summary = {}
    for kind in kinds:
        sel = [r for r in rows if kind == "all" or r["difficulty"] == kind]
        entry = {"n_tumours": len(sel), "auc": {}, "cnr_median": {}, "pmri_vs_ct": {}, "pmri_vs_mri": {}}
        for name in names:
            auc = np.array([r[f"{name}_auc"] for r in sel])
            entry["auc"][name] = {"mean": float(auc.mean()), "sd": float(auc.std(ddof=1)) if auc.size > 1 else 0.0,
                                  "median": float(np.median(auc))}
            entry["cnr_median"][name] = float(np.nanmedian([r[f"{name}_cnr"] for r in sel]))
        for name in pmri_names:
            entry["pmri_vs_ct"][name] = _paired(sel, name, CT)
            if MRI in names:
                entry["pmri_vs_mri"][name] = _paired(sel, name, MRI)
        summary[kind] = entry
    return summary


def summary_table(summary: dict, names: List[str], pmri_names: List[str]) -> str:
    """One row per image: its mean AUC per kind of tumour and, for a pMRI, its difference to the CT's."""
    kinds = list(summary)
    headers = ["image"] + [f"AUC {k} (n={summary[k]['n_tumours']})" for k in kinds] + \
        [f"{k}: pMRI - CT (higher, p)" for k in kinds]
    rows = []
    for name in names:
        row = [name] + [f"{fmt(summary[k]['auc'][name]['mean'])} ± {fmt(summary[k]['auc'][name]['sd'])}"
                        for k in kinds]
        for k in kinds:
            c = summary[k]["pmri_vs_ct"].get(name)
            row.append("" if c is None else
                       f"{c['mean_difference']:+.3f} ({c['n_higher']}/{c['n']}, p {fmt(c['p_wilcoxon'], 4)})")
        rows.append(row)
    return format_table(headers, rows, "tumour vs its surroundings, AUC (0.5: invisible by intensity, 1: fully "
                                       "separated)")


def plot(rows: List[dict], pmri_names: List[str], filename: Path) -> None:
    """Per pMRI: each tumour's AUC in the pMRI against the CT's (and against the MRI's, where there is one)."""
    from nnunet_cmedl.plotting import save_figure, subplots
    references = [CT] + ([MRI] if MRI in image_names(rows) else [])
    fig, axes = subplots(len(references), len(pmri_names), squeeze=False,
                         figsize=(max(4.5, 3.6 * len(pmri_names)), 3.6 * len(references)))
    fig.set_layout_engine("constrained")
    colours = {"hard": "tab:red", "easy": "tab:blue", "all": "tab:grey"}
    for j, name in enumerate(pmri_names):
        for i, ref in enumerate(references):
            ax = axes[i][j]
            for kind, colour in colours.items():
                sel = [r for r in rows if r["difficulty"] == kind]
                if sel:
                    ax.scatter([r[f"{ref}_auc"] for r in sel], [r[f"{name}_auc"] for r in sel], s=14,
                               color=colour, label=kind, alpha=0.8)
            ax.plot([0.5, 1.0], [0.5, 1.0], color="black", lw=0.8, ls="--")
            ax.set_xlim(0.48, 1.02)
            ax.set_ylim(0.48, 1.02)
            ax.set_xlabel(f"AUC in the {ref}")
            ax.set_ylabel(f"AUC in pMRI ({name})")
            ax.set_title(f"{name} vs {ref}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("tumour vs its surroundings, AUC per tumour\n(above the line: the pMRI shows it better)", fontsize=9)
    save_figure(fig, filename)


class Crops:
    """The first ``per_kind`` tumours of each kind, as 2d crops of every image through the tumour's largest slice."""

    def __init__(self, per_kind: int):
        self.per_kind, self.kept = per_kind, []

    def __call__(self, row: dict, images: dict, mask: np.ndarray, spacing_zyx) -> None:
        from nnunet_cmedl.evaluation.panels import _zoom_box
        from nnunet_cmedl.plotting import largest_area_slice
        if sum(r["difficulty"] == row["difficulty"] for r, _, _ in self.kept) >= self.per_kind:
            return
        z = largest_area_slice(mask)
        r0, r1, c0, c1 = _zoom_box(mask[z], mask.shape[1:], tuple(spacing_zyx[1:]), factor=3.0, min_mm=45.0)
        self.kept.append((row, {n: im[z, r0:r1, c0:c1].copy() for n, im in images.items()}, mask[z, r0:r1, c0:c1]))

    def plot(self, filename: Path) -> None:
        from nnunet_cmedl.evaluation.panels import _contour, _percentile_window
        from nnunet_cmedl.plotting import save_figure, subplots
        names = list(self.kept[0][1])
        fig, axes = subplots(len(self.kept), len(names), squeeze=False,
                             figsize=(1.9 * len(names), 2.0 * len(self.kept)))
        fig.set_layout_engine("constrained")
        for i, (row, crops, mask) in enumerate(self.kept):
            for j, name in enumerate(names):
                ax = axes[i][j]
                low, high = _percentile_window(crops[name])
                ax.imshow(crops[name], cmap="gray", vmin=low, vmax=high, extent=(0, mask.shape[1], mask.shape[0], 0))
                _contour(ax, mask, "tab:red", (0, mask.shape[1], mask.shape[0], 0), linestyle=":")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{name}: AUC {row[f'{name}_auc']:.2f}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"{row['case']} #{row['tumour']}\n{row['difficulty']}", fontsize=7)
        fig.suptitle("each tumour's largest slice (dotted: reference), each crop windowed to its own 1-99th "
                     "percentiles", fontsize=8)
        save_figure(fig, filename)


# ---------------------------------------------------------------------------------------------- CLI
def _named_folders(specs: List[str]) -> Dict[str, Path]:
    named = {}
    for i, spec in enumerate(specs):
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = (f"pMRI{i + 1}" if len(specs) > 1 else "pMRI"), spec
        if not name or name in (CT, MRI) or name in named or not name.replace("_", "").replace("-", "").isalnum():
            raise UserInputError(f"--pmri {spec}: give each pMRI folder a distinct name of letters, digits, - or _ "
                                 f"(NAME=FOLDER), not {CT!r} or {MRI!r}")
        named[name] = Path(folder)
    return named


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl tumour-contrast",
        description="Does the pseudo-MRI show the tumours better than the CT? Per tumour of the reference labels, how "
                    "well each image's intensities set it apart from the tissue around it (a ring of --ring-mm "
                    "outside it, in no label): AUC (0.5: invisible by intensity, 1: every tumour voxel brighter, "
                    "or every one darker, than every ring voxel) and CNR, in the CT, each pMRI and the patients' own "
                    "MRI where there is one. CMEDL's teacher can only teach what it sees on the pMRI: a pMRI whose "
                    "AUCs are no higher than the CT's adds no contrast the CT does not already have. Writes "
                    "OUT_PREFIX.csv (per tumour), .json (summary, paired Wilcoxon pMRI vs CT and vs MRI) and .png.",
        epilog="example (a benchmark run's pMRI of the test CTs, on the phantom):\n"
               "  nnunet_cmedl tumour-contrast --labels nnUNet_raw/Dataset502_CMEDLThorax/labelsTs --ct "
               "nnUNet_raw/Dataset502_CMEDLThorax/imagesTs --pmri cyclegan=predictions/<run>/teacher_on_pmri_final/"
               "pmri_and_teacher --phantom-metadata nnUNet_raw/Dataset502_CMEDLThorax/phantom_metadata.json --mri "
               "phantom -o contrast\n"
               "your own data: export the pMRI (nnunet_cmedl export-pmri -i imagesTs -o pmri ...), then\n"
               "  nnunet_cmedl tumour-contrast --labels labelsTs --ct imagesTs --pmri pmri -o contrast",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="folder of reference label images CASE.nii.gz")
    p.add_argument("--ct", required=True, help="folder of the CT images (CASE_0000.nii.gz, nnU-Net naming)")
    p.add_argument("--pmri", required=True, nargs="+", metavar="[NAME=]FOLDER",
                   help="folder(s) of pseudo-MRI CASE_pMRI.nii.gz (export-pmri's output), each with a name")
    p.add_argument("--mri", default=None, metavar="FOLDER|phantom",
                   help="the patients' own MRI registered onto their CT (CASE.nii.gz or CASE_0000.nii.gz), or "
                        "'phantom' for a make-synthetic dataset's own (needs --phantom-metadata)")
    p.add_argument("--phantom-metadata", default=None,
                   help="phantom_metadata.json of a make-synthetic dataset: its test tumours, hard and easy")
    p.add_argument("--label", type=int, default=None, help="the tumour label (default: every foreground label)")
    p.add_argument("--ring-mm", type=float, default=None,
                   help=f"width of the surrounding ring in mm (default: {DEFAULT_RING_MM:g}, or the smallest voxel "
                        f"spacing where that is wider)")
    p.add_argument("--gap-mm", type=float, default=0.0,
                   help="leave out the voxels within this distance of the tumour (its blurred border) from the ring "
                        "(default: 0)")
    p.add_argument("--file-ending", default=".nii.gz")
    p.add_argument("--crops", type=int, default=3, metavar="N",
                   help="OUT_PREFIX_crops.png: the first N tumours of each kind, every image cropped around them "
                        "(default: 3; 0: none)")
    p.add_argument("-o", "--output-prefix", required=True, help="writes OUT_PREFIX.csv, .json and .png")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    prefix = strip_output_prefix(args.output_prefix)
    csv_path, json_path, png_path, crops_path = (Path(prefix + e) for e in (".csv", ".json", ".png", "_crops.png"))
    with exclusive_output(json_path, "nnunet_cmedl tumour-contrast"):
        refuse_existing_outputs([csv_path, json_path, png_path] + ([crops_path] if args.crops else []),
                                args.overwrite)
        if args.crops < 0:
            raise UserInputError(f"--crops {args.crops}: must be 0 or more")
        crops = Crops(args.crops) if args.crops else None
        if (args.ring_mm is not None and not args.ring_mm > 0) or not args.gap_mm >= 0:
            raise UserInputError(f"--ring-mm {args.ring_mm} / --gap-mm {args.gap_mm:g}: the ring must be wider than "
                                 f"0 and the gap at least 0")
        pmri = _named_folders(args.pmri)
        rows = measure(args.labels, args.ct, pmri, mri_folder=args.mri, phantom_metadata=args.phantom_metadata,
                       label=args.label, ring_mm=args.ring_mm, file_ending=args.file_ending, gap_mm=args.gap_mm,
                       on_tumour=crops, show_progress=True)
        names = image_names(rows)
        summary = summarise(rows, list(pmri))
        result = {"inputs": {"labels": str(Path(args.labels).resolve()), "ct": str(Path(args.ct).resolve()),
                             "pmri": {n: str(f.resolve()) for n, f in pmri.items()}, "mri": args.mri,
                             "phantom_metadata": args.phantom_metadata, "label": args.label,
                             "ring_mm": args.ring_mm, "gap_mm": args.gap_mm},
                  "definitions": {"auc": "max(A, 1 - A), A = Mann-Whitney U / (n_tumour n_ring): tumour voxels vs "
                                         "the ring's", "cnr": "(tumour mean - ring mean) / ring sd",
                                  "ring": f"voxels more than {args.gap_mm:g} mm and at most {args.gap_mm:g} mm + "
                                          f"the ring's width outside the tumour, in no label; width "
                                          f"{args.ring_mm or f'{DEFAULT_RING_MM:g} mm or the smallest spacing'}"},
                  "summary": summary, "per_tumour": rows}
        write_csv(csv_path, list(rows[0]), rows, overwrite=args.overwrite)
        write_json(json_path, result, overwrite=args.overwrite)
        plot(rows, list(pmri), png_path)
        if crops is not None:
            crops.plot(crops_path)
    print(summary_table(summary, names, list(pmri)))
    print(f"wrote {csv_path}, {json_path}, {png_path}{f' and {crops_path}' if crops else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
