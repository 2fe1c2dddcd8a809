"""``nnunet_cmedl report``: one self-contained HTML page for a trained model.

The page has, in order: a header (dataset, trainer, configuration, fold, checkpoint, epochs, dates, CMEDL
hyperparameters when nnU-Net's ``debug.json`` has them), the training curves of every logged loss (drawn here from
the checkpoint's logging dict, plus nnU-Net's ``progress.png``, our ``progress_cmedl.png`` and the latest
``cmedl_snapshots/*.png``), the metric tables of ``nnunet_cmedl evaluate`` JSONs, the method comparison of an
``nnunet_cmedl compare`` JSON, case panels (PNG folder, captions from the ``index.json`` of ``nnunet_cmedl panels``)
and the metric definitions copied from the JSONs. Images are embedded as base64 PNG data URIs and the CSS is inline:
the file can be mailed or archived on its own (no script, no external resource).

This module gathers the data (checkpoint, JSONs, PNG bytes) into plain dicts and lists; the Jinja2 templates in
``templates/`` (``report.html``, its macros in ``macros.html``, the CSS in ``report.css``) lay them out, with
autoescaping on.

Python API: ``write_report(model_folder, output_html, fold=0, metrics=(), comparison=None, panels=None, title=None,
overwrite=False) -> Path``.
"""
from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import jinja2

from nnunet_cmedl.checkpoint_io import TRUST_FLAG, load_checkpoint
from nnunet_cmedl.errors import UserInputError
from mri_unpaired.atomic import atomic_file, refuse_existing

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVALUATE_TOOL = "nnunet_cmedl evaluate"
COMPARE_TOOL = "nnunet_cmedl compare"
METRICS = ("dsc", "sdsc", "hd95")
METRIC_TITLES = {"dsc": "DSC", "sdsc": "sDSC", "hd95": "HD95 (mm)"}
TEMPLATE = "report.html"
PANELS_INDEX = "index.json"  # written by nnunet_cmedl panels (panels.INDEX_NAME)

# what each logged curve is (nnU-Net's stock keys, then nnUNetTrainerCMEDL's)
CURVE_DESCRIPTIONS = {
    "train_losses": "student: nnU-Net's training loss (deep-supervised Dice + CE on CT; for CMEDL with the hint)",
    "val_losses": "student: validation loss on CT",
    "mean_fg_dice": "student: pseudo Dice on CT (validation patches, mean over foreground classes)",
    "ema_fg_dice": "student: exponential moving average of the pseudo Dice (nnU-Net's checkpoint_best criterion)",
    "lrs": "student: learning rate",
    "cmedl_G_adversarial": "generators: LSGAN adversarial loss (CT->pMRI and MRI->CT)",
    "cmedl_G_cycle": "generators: L1 cycle-consistency loss",
    "cmedl_G_identity": "generators: L1 identity loss",
    "cmedl_G_nce": "generator (CUT): PatchNCE loss between CT and pMRI encoder features",
    "cmedl_G_nce_identity": "generator (CUT): PatchNCE identity loss on real MRI",
    "cmedl_D": "discriminators: LSGAN loss (real vs. fakes; CycleGAN: pooled fakes)",
    "cmedl_teacher_seg": "teacher: segmentation loss on pMRI (CT labels); it also drives the generator",
    "cmedl_student_seg": "student: segmentation loss on CT (without the hint)",
    "cmedl_hint": "hint loss: student features on CT vs. teacher features on the matching pMRI",
    "cmedl_teacher_val_loss": "teacher: validation loss on pMRI",
    "cmedl_teacher_pseudo_dice_pmri": "teacher: pseudo Dice on pMRI (validation patches)",
}
STOCK_PANELS = (
    ("Loss", ("train_losses", "val_losses")),
    ("Pseudo Dice (val)", ("mean_fg_dice", "ema_fg_dice")),
)
# trainer attributes shown in the header when fold_X/debug.json (written by nnU-Net at the start of training) has them
HYPERPARAMETERS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr",
                   "weight_decay", "batch_size", "i2i_method", "lambda_adversarial", "lambda_cycle", "lambda_identity",
                   "lambda_nce", "nce_identity", "nce_patches", "nce_mlp_features", "nce_temperature",
                   "lambda_teacher_seg_on_generator", "lambda_hint", "hint_decoder_stages", "hint_detach_teacher",
                   "gan_initial_lr", "gan_betas", "gan_constant_lr_fraction", "image_pool_size", "generator_features",
                   "generator_downsamplings", "generator_res_blocks", "discriminator_features",
                   "discriminator_layers", "mri_num_channels", "grad_clip_norm", "save_snapshot_every")
NOT_CURVES = ("epoch_start_timestamps", "epoch_end_timestamps")


# ---------------------------------------------------------------------------------------------------- formatting

def _float(x) -> float:
    """JSON null -> NaN; numbers -> float; anything else -> NaN."""
    if x is None or isinstance(x, bool):
        return float("nan")
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def fmt(x, digits: int = 3) -> str:
    """Numbers as ``nnunet_cmedl evaluate`` / ``compare`` print them (``tables.fmt``); JSON null -> 'nan'."""
    from nnunet_cmedl.evaluation.tables import fmt as table_fmt
    if isinstance(x, (bool, int)) or x is None:
        return table_fmt(x) if x is not None else "nan"
    return table_fmt(_float(x), digits)


def fmt_p(p) -> str:
    """p-values as ``nnunet_cmedl compare`` prints them (4 digits)."""
    return fmt(p, 4)


def fmt_mean_sd(mean, sd) -> str:
    m, s = _float(mean), _float(sd)
    if math.isnan(m):
        return "nan"
    return fmt(m) if math.isnan(s) else f"{fmt(m)} ± {fmt(s)}"


def tooltip(x) -> Optional[str]:
    """The unrounded value shown over a number cell (repr of the float); None (no tooltip) for null/bool/text."""
    return None if x is None or isinstance(x, (bool, str)) else repr(_float(x))


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _read_png(path: Path) -> Optional[bytes]:
    """The bytes of a PNG file, or None if it cannot be read or is not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def _timestamp(t) -> str:
    if isinstance(t, datetime):
        return t.isoformat(sep=" ", timespec="seconds")
    try:
        return datetime.fromtimestamp(float(t)).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(t)


# ---------------------------------------------------------------------------------------------------- model folder

def _fold_name(fold) -> str:
    f = str(fold).strip()
    if f.startswith("fold_"):
        f = f[len("fold_"):]
    if f != "all" and not re.fullmatch(r"\d+", f):
        raise UserInputError(f"--fold: expected a fold number or 'all', got {fold!r}")
    return f"fold_{f}"


def find_checkpoint(fold_folder: Path) -> Tuple[Path, str]:
    """checkpoint_final.pth, else checkpoint_latest.pth, else checkpoint_best.pth; with a sentence saying which."""
    for i, name in enumerate(CHECKPOINT_NAMES):
        p = fold_folder / name
        if p.is_file():
            if i == 0:
                return p, f"{name} (training finished)"
            return p, f"{name} ({CHECKPOINT_NAMES[0]} is missing: training did not finish, or was interrupted)"
    raise UserInputError(f"{fold_folder}: no checkpoint in this fold folder (looked for {', '.join(CHECKPOINT_NAMES)})")


def load_checkpoint_info(path: Path, trust: bool = False) -> dict:
    """The keys of an nnU-Net checkpoint that the report needs (loaded on the CPU, see checkpoint_io)."""
    ckpt = load_checkpoint(path, trust=trust)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("logging"), dict):
        raise UserInputError(f"{path}: not an nnU-Net v2 training checkpoint (no 'logging' dict)")
    info = {k: ckpt.get(k) for k in ("logging", "trainer_name", "init_args", "current_epoch", "cmedl_i2i_kwargs")}
    modalities = ckpt.get("cmedl_modalities")  # (labelled, unpaired); checkpoints from before: the paper's CT, MRI
    info["modalities"] = tuple(modalities) if isinstance(modalities, (list, tuple)) and len(modalities) == 2 \
        else ("CT", "MRI")
    info["has_cmedl_weights"] = "cmedl_teacher_weights" in ckpt
    return info


def _series(values) -> List[float]:
    out = []
    for v in values if isinstance(values, (list, tuple)) else []:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def curves_from_logging(logging: dict) -> Dict[str, List[float]]:
    """Every numeric per-epoch series of the logging dict; dice_per_class_or_region is split per class."""
    curves: Dict[str, List[float]] = {}
    for key, values in logging.items():
        if key in NOT_CURVES or not isinstance(values, (list, tuple)):
            continue
        if key == "dice_per_class_or_region":
            width = max((len(v) for v in values if isinstance(v, (list, tuple))), default=0)
            for c in range(width):
                curves[f"{key}[{c}]"] = [float(v[c]) if isinstance(v, (list, tuple)) and c < len(v)
                                         and isinstance(v[c], (int, float)) else float("nan") for v in values]
            continue
        curves[str(key)] = _series(values)
    return curves


def is_cmedl_logging(logging: dict) -> bool:
    return any(str(k).startswith("cmedl_") for k in logging)


def _curve_panels(curves: Dict[str, List[float]], cmedl: bool) -> List[Tuple[str, List[str]]]:
    from nnunet_cmedl.training.figures import PANELS
    panels = [(t, [k for k in keys if k in curves]) for t, keys in (PANELS if cmedl else STOCK_PANELS)]
    if cmedl:  # CMEDL's progress figure has no EMA pseudo Dice; nnU-Net's does
        panels = [(t, keys + (["ema_fg_dice"] if t.startswith("Pseudo Dice") and "ema_fg_dice" in curves else []))
                  for t, keys in panels]
    per_class = [k for k in curves if k.startswith("dice_per_class_or_region[")]
    if per_class:
        panels.append(("Pseudo Dice per class / region (val)", per_class))
    if "lrs" in curves:
        panels.append(("Learning rate (student)", ["lrs"]))
    shown = {k for _, keys in panels for k in keys}
    other = [k for k in curves if k not in shown]
    if other:
        panels.append(("Other logged values", other))
    return panels


def plot_curves(logging: dict, cmedl: bool, class_names: Optional[Sequence[str]] = None,
                modalities: Sequence[str] = ("CT", "MRI")) -> bytes:
    """PNG of every logged curve: CMEDL's panels (figures.PANELS) or nnU-Net's stock ones, plus lr, epoch time.
    ``modalities``: (labelled, unpaired) names for the legends (the checkpoint's ``cmedl_modalities``)."""
    from matplotlib.ticker import MaxNLocator
    from nnunet_cmedl.plotting import subplots
    from nnunet_cmedl.training.figures import curve_labels

    labels = dict(curve_labels(*modalities), ema_fg_dice=f"student EMA on {modalities[0]}") if cmedl else \
        {"train_losses": "train loss", "val_losses": "validation loss", "mean_fg_dice": "pseudo Dice",
         "ema_fg_dice": "pseudo Dice (EMA)"}
    curves = curves_from_logging(logging)
    panels = _curve_panels(curves, cmedl)
    starts, ends = _series(logging.get("epoch_start_timestamps", [])), _series(logging.get("epoch_end_timestamps", []))
    durations = [e - s for s, e in zip(starts, ends)]
    if durations:
        panels.append(("Epoch duration (s)", ["__epoch_duration__"]))
        curves = dict(curves, __epoch_duration__=durations)
    ncols = 3
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = subplots(nrows, ncols, figsize=(6 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, keys) in zip(axes.flat, panels):
        drawn = False
        for key in keys:
            values = curves.get(key, [])
            if not values:
                continue
            label = "epoch time" if key == "__epoch_duration__" else labels.get(key, key.replace("cmedl_", ""))
            m = re.fullmatch(r"dice_per_class_or_region\[(\d+)\]", key)
            if m and class_names and int(m.group(1)) < len(class_names):
                label = class_names[int(m.group(1))]
            ax.plot(range(len(values)), values, marker="o" if len(values) < 20 else None, label=label)
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        if title.startswith("Learning rate") and drawn and all(v > 0 for v in curves["lrs"] if not math.isnan(v)):
            ax.set_yscale("log")
    kind = "CMEDL" if cmedl else "nnU-Net (no CMEDL values logged)"
    fig.suptitle(f"Training curves from the checkpoint's logging: {kind}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (4 * nrows)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return buf.getvalue()


def _read_optional_json(path: Path, what: str):
    if not path.is_file():
        return None
    from nnunet_cmedl.evaluation.tables import read_json
    return read_json(path, what)


def _class_names(model_folder: Path) -> Optional[List[str]]:
    """'label V (name)' for the foreground labels of dataset.json in nnU-Net's order (sorted by value), which is the
    order of dice_per_class_or_region; None for region-based datasets or without a readable dataset.json."""
    try:
        with open(model_folder / "dataset.json") as f:
            labels = json.load(f).get("labels")
        if any(isinstance(v, (list, tuple)) for v in labels.values()):
            return None
        fg = sorted((int(v), str(k)) for k, v in labels.items() if int(v) != 0 and k != "ignore")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return [f"label {v} ({k})" for v, k in fg]


def _hyperparameters(fold_folder: Path) -> List[Tuple[str, str]]:
    """Trainer attributes from nnU-Net's debug.json (every attribute as a string); [] if it is absent/unreadable."""
    try:
        with open(fold_folder / "debug.json") as f:
            debug = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(debug, dict):
        return []
    return [(k, str(debug[k])) for k in HYPERPARAMETERS if k in debug]


def _latest_snapshot(fold_folder: Path) -> Tuple[Optional[Path], int]:
    folder = fold_folder / "cmedl_snapshots"
    if not folder.is_dir():
        return None, 0
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()]
    if not pngs:
        return None, 0

    def key(p: Path):
        m = re.search(r"(\d+)", p.stem)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime, p.name)
    return max(pngs, key=key), len(pngs)


def load_model(model_folder, fold=0, trust_checkpoint: bool = False) -> dict:
    """Everything the report shows about the model folder and one of its folds."""
    model_folder = Path(model_folder)
    if not model_folder.is_dir():
        raise UserInputError(f"{model_folder}: model folder does not exist or is not a folder")
    fold_folder = model_folder / _fold_name(fold)
    if not fold_folder.is_dir():
        found = sorted(p.name for p in model_folder.glob("fold_*") if p.is_dir())
        raise UserInputError(f"{fold_folder}: fold folder does not exist (folds found: "
                             f"{', '.join(found) if found else 'none'})")
    ckpt_path, ckpt_note = find_checkpoint(fold_folder)
    ckpt = load_checkpoint_info(ckpt_path, trust_checkpoint)
    plans = _read_optional_json(model_folder / "plans.json", "plans.json")
    if plans is not None and not isinstance(plans, dict):
        raise UserInputError(f"{model_folder / 'plans.json'}: not an nnU-Net plans file (not a JSON object)")
    init_args = ckpt["init_args"] if isinstance(ckpt["init_args"], dict) else {}
    parts = model_folder.name.split("__")
    init_plans = init_args.get("plans") if isinstance(init_args.get("plans"), dict) else {}
    dataset_name = (plans or {}).get("dataset_name") or init_plans.get("dataset_name") or model_folder.parent.name
    logging = ckpt["logging"]
    timestamps = logging.get("epoch_start_timestamps") or []
    end_timestamps = logging.get("epoch_end_timestamps") or []
    return {
        "model_folder": model_folder.resolve(),
        "fold_folder": fold_folder.resolve(),
        "fold": _fold_name(fold)[len("fold_"):],
        "checkpoint": ckpt_path.resolve(),
        "checkpoint_note": ckpt_note,
        "trainer_name": ckpt["trainer_name"] or (parts[0] if len(parts) == 3 else "unknown"),
        "plans_name": (plans or {}).get("plans_name") or (parts[1] if len(parts) == 3 else "unknown"),
        "configuration": init_args.get("configuration") or (parts[2] if len(parts) == 3 else "unknown"),
        "dataset_name": dataset_name if plans is not None else f"{dataset_name} (no plans.json in the model folder)",
        "current_epoch": ckpt["current_epoch"],
        "logged_epochs": len(logging.get("train_losses") or []),
        "training_started": _timestamp(timestamps[0]) if timestamps else None,
        "training_last_epoch_end": _timestamp(end_timestamps[-1]) if end_timestamps else None,
        "logging": logging,
        "is_cmedl": is_cmedl_logging(logging),
        "has_cmedl_weights": ckpt["has_cmedl_weights"],
        "modalities": ckpt["modalities"],
        "i2i_kwargs": ckpt["cmedl_i2i_kwargs"] if isinstance(ckpt["cmedl_i2i_kwargs"], dict) else None,
        "hyperparameters": _hyperparameters(fold_folder),
        "class_names": _class_names(model_folder),
        "progress_png": fold_folder / "progress.png",
        "progress_cmedl_png": fold_folder / "progress_cmedl.png",
        "snapshot": _latest_snapshot(fold_folder),
    }


# ---------------------------------------------------------------------------------------------------- JSON inputs

def _tool_of(obj) -> Optional[str]:
    return obj.get("tool") if isinstance(obj, dict) and isinstance(obj.get("tool"), str) else None


def load_metrics_json(path) -> dict:
    """An evaluation JSON written by ``nnunet_cmedl evaluate`` (UserInputError naming the file otherwise)."""
    from nnunet_cmedl.evaluation.tables import read_json
    obj = read_json(path, "evaluation JSON")
    tool = _tool_of(obj)
    if tool is not None and tool != EVALUATE_TOOL:
        raise UserInputError(f"{path}: written by {tool!r}, not an evaluation JSON of '{EVALUATE_TOOL}' "
                             f"(--metrics takes those{'; pass it as --comparison' if tool == COMPARE_TOOL else ''})")
    if not isinstance(obj, dict) or not isinstance(obj.get("aggregates"), dict) or \
            not isinstance(obj.get("labels"), list) or not isinstance(obj.get("per_case"), list):
        raise UserInputError(f"{path}: not an evaluation JSON written by '{EVALUATE_TOOL}' (no labels / aggregates / "
                             "per_case)")
    return obj


def load_comparison_json(path) -> dict:
    """A comparison JSON written by ``nnunet_cmedl compare`` (UserInputError naming the file otherwise)."""
    from nnunet_cmedl.evaluation.tables import read_json
    obj = read_json(path, "comparison JSON")
    tool = _tool_of(obj)
    if tool is not None and tool != COMPARE_TOOL:
        raise UserInputError(f"{path}: written by {tool!r}, not a comparison JSON of '{COMPARE_TOOL}' "
                             f"(--comparison takes those{'; pass it as --metrics' if tool == EVALUATE_TOOL else ''})")
    if not isinstance(obj, dict) or not isinstance(obj.get("tests"), list) or \
            not all(isinstance(t, dict) for t in obj["tests"]):
        raise UserInputError(f"{path}: not a comparison JSON written by '{COMPARE_TOOL}' (no 'tests' list)")
    return obj


def _panel_entry_caption(e: dict) -> Optional[str]:
    """A caption from the fields ``nnunet_cmedl panels`` writes per panel (case, slice, Dice of student / teacher,
    student source, MRI file); None if the entry has none of them."""
    parts = []
    if e.get("case") is not None:
        parts.append(f"case {e['case']}")
    if e.get("slice") is not None:
        parts.append(f"slice {e['slice']}" + (f" of {e['num_slices']}" if e.get("num_slices") is not None else "")
                     + (f" (axis {e['axis']})" if e.get("axis") is not None else ""))
    if e.get("reference_empty"):
        parts.append("empty reference")
    dices = [f"{who} {fmt(e[k])}" for who, k in (("student", "dice_student"), ("teacher", "dice_teacher")) if k in e]
    if dices:
        parts.append("Dice " + ", ".join(dices))
    if e.get("student_source"):
        parts.append(f"student segmentation: {e['student_source']}")
    if e.get("mri_file"):
        parts.append(f"MRI {Path(str(e['mri_file'])).name}"
                     + (f" slice {e['mri_slice']}" if e.get("mri_slice") is not None else ""))
    return "; ".join(parts) if parts else None


def _index_description(index) -> Optional[str]:
    """What ``nnunet_cmedl panels`` says about all its panels (contour colours, CT window, slice rule)."""
    if not isinstance(index, dict):
        return None
    parts = []
    if isinstance(index.get("contours"), dict):
        parts.append("contours: " + ", ".join(f"{k} {v}" for k, v in index["contours"].items()))
    w = index.get("ct_window")
    if isinstance(w, dict):
        parts.append(f"CT window {w.get('name', '')} (width {w.get('width')}, level {w.get('level')})".replace(
            "window  (", "window ("))
    if isinstance(index.get("slice_rule"), str):
        parts.append(f"slice: {index['slice_rule']}")
    return "; ".join(parts) if parts else None


def _caption_index(index) -> Dict[str, str]:
    """Captions by PNG file name (relative to the panels folder) from index.json: the index of ``nnunet_cmedl
    panels`` (``{"panels": [{"png": name, "case": ..., "slice": ..., ...}], ...}``, captions made of each entry's
    fields), or a plain ``{file: caption}``."""
    if isinstance(index, dict) and isinstance(index.get("panels"), list):
        captions = {e["png"]: _panel_entry_caption(e) for e in index["panels"]
                    if isinstance(e, dict) and isinstance(e.get("png"), str)}
    elif isinstance(index, dict):
        captions = {str(k): v for k, v in index.items()}
    else:
        return {}
    return {k: c for k, c in captions.items() if isinstance(c, str)}


def load_panels(folder) -> dict:
    """Every PNG under ``folder`` (sorted by relative path) with its caption from index.json if there is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: panels folder does not exist or is not a folder")
    index_path = folder / PANELS_INDEX
    captions: Dict[str, str] = {}
    note = description = None
    if index_path.is_file():
        from nnunet_cmedl.evaluation.tables import read_json
        index = read_json(index_path, "panels index.json")
        captions = _caption_index(index)
        description = _index_description(index)
        if not captions:
            note = f"{index_path.name}: no captions found in it (expected the index.json of 'nnunet_cmedl panels' " \
                   "or {file: caption}); panels shown with their file names"
    items, skipped = [], []
    for p in sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".png"),
                    key=lambda p: p.relative_to(folder).as_posix()):
        rel = p.relative_to(folder).as_posix()
        data = _read_png(p)
        if data is None:
            skipped.append(rel)
            continue
        items.append({"name": rel, "data": data, "caption": captions.get(rel)})
    return {"folder": folder.resolve(), "items": items, "skipped": skipped, "note": note, "description": description,
            "index": index_path.name if index_path.is_file() else None}


# ---------------------------------------------------------------------------------------------------- page sections
# Each returns the plain data its template block lays out (report.html); texts and numbers are escaped there.

def _header(model: dict) -> dict:
    epochs = model["current_epoch"]
    facts = [
        ("dataset", model["dataset_name"]),
        ("model folder", str(model["model_folder"])),
        ("trainer", model["trainer_name"]),
        ("plans", model["plans_name"]),
        ("configuration", model["configuration"]),
        ("fold", model["fold"]),
        ("checkpoint", model["checkpoint_note"]),
        ("epochs trained", f"{epochs if epochs is not None else 'unknown'} (per-epoch values logged: "
                           f"{model['logged_epochs']})"),
        ("training started", model["training_started"] or "unknown"),
        ("last epoch ended", model["training_last_epoch_end"] or "unknown"),
        ("CMEDL model", "yes (cmedl_* values in the logging)" if model["is_cmedl"] else
         "no (no cmedl_* values in the logging)"),
        ("report written", datetime.now(timezone.utc).astimezone().isoformat(sep=" ", timespec="seconds")),
    ]
    hp = list(model["hyperparameters"]) + [(f"i2i: {k}", str(v)) for k, v in (model["i2i_kwargs"] or {}).items()]
    return {"facts": facts, "hyperparameters": hp}


def _curves(model: dict) -> dict:
    """The curves figure, a row per logged value (first / last / min / max) and the PNGs of the fold folder."""
    nan, names = float("nan"), model["class_names"]
    rows = []
    for key, values in curves_from_logging(model["logging"]).items():
        finite = [v for v in values if not math.isnan(v)]
        base = key.split("[")[0]
        what = CURVE_DESCRIPTIONS.get(base, "")
        if base == "dice_per_class_or_region":
            i = int(key[len(base) + 1:-1])
            what = f"student: pseudo Dice of {names[i] if names and i < len(names) else f'class / region {i}'} (val)"
        rows.append({"key": key, "what": what, "epochs": len(values), "finite": len(finite),
                     "first": values[0] if values else None, "last": values[-1] if values else nan,
                     "min": min(finite, default=nan), "max": max(finite, default=nan)})
    figures = []
    for title, p in (("progress.png (nnU-Net)", model["progress_png"]),
                     ("progress_cmedl.png (CMEDL)", model["progress_cmedl_png"])):
        figures.append({"title": title, "alt": title, "png": _read_png(p) if p.is_file() else None,
                        "caption": str(p), "absent": f"{p.name}: not present in {model['fold_folder']}"
                        if not p.is_file() else f"{p.name}: not a readable PNG"})
    snap, n = model["snapshot"]
    figures.append({"title": "Latest training snapshot (cmedl_snapshots)", "alt": snap.name if snap else None,
                    "png": _read_png(snap) if snap is not None else None,
                    "caption": f"{snap.name} (the latest of {n} snapshot(s) in {snap.parent})" if snap else None,
                    "absent": "no snapshot PNG in cmedl_snapshots/ (not present)" if snap is None
                    else f"{snap}: not a readable PNG"})
    return {"cmedl": model["is_cmedl"], "trainer": model["trainer_name"], "checkpoint": model["checkpoint"].name,
            "plot": plot_curves(model["logging"], model["is_cmedl"], model["class_names"], model["modalities"]),
            "rows": rows,
            "figures": figures}


def _aggregate_rows(labels: Sequence[str], label_names: dict, aggregates) -> List[dict]:
    """Per label with an aggregate: its statistics (mean, sd, median, n, n_nan) of each metric in METRICS."""
    rows = []
    for k in labels:
        a = aggregates.get(k) if isinstance(aggregates, dict) else None
        if isinstance(a, dict):
            stats = [a.get(m) if isinstance(a.get(m), dict) else {} for m in METRICS]
            rows.append({"label": k, "name": label_names.get(k, ""),
                         "stats": [{f: s.get(f) for f in ("mean", "sd", "median", "n", "n_nan")} for s in stats]})
    return rows


def _metrics_file(path: Path, res: dict) -> dict:
    """One evaluation JSON: its inputs, the aggregates per label (and per case group) and the per-case rows."""
    inp = res.get("inputs") if isinstance(res.get("inputs"), dict) else {}
    labels = [str(k) for k in res["labels"]]
    names = res.get("label_names") if isinstance(res.get("label_names"), dict) else {}
    groups = res.get("group_aggregates") if isinstance(res.get("group_aggregates"), dict) else {}
    per_case = [r for r in res["per_case"] if isinstance(r, dict)]
    keys = ("case", "group", "label", "label_name", "dsc", "sdsc", "hd95", "hd95_undefined", "ref_voxels",
            "pred_voxels")
    return {
        "name": path.name,
        "facts": [("file", str(path)), ("predictions", inp.get("pred_folder", "unknown")),
                  ("references", inp.get("ref_folder", "unknown")),
                  ("cases", inp.get("n_cases", len({r.get("case") for r in per_case}))),
                  ("surface Dice tolerance", f"{_float(res.get('tolerance_mm')):g} mm"),
                  ("evaluated", res.get("created", "unknown"))],
        "notes": [f"{what}: {', '.join(map(str, inp[key]))}" for key, what in (
            ("missing_predictions", "reference cases without prediction (skipped)"),
            ("labels_only_in_predictions", "labels found only in predictions (not evaluated)")) if inp.get(key)],
        "aggregates": _aggregate_rows(labels, names, res["aggregates"]),
        "groups": [(str(g), _aggregate_rows(labels, names, aggs)) for g, aggs in groups.items()],
        "per_case": [{k: r.get(k) for k in keys} for r in per_case],
    }


def _comparison(path: Path, cmp: dict) -> dict:
    """A comparison JSON: its inputs and notes, and its tests grouped by pair of methods."""
    alpha = _float(cmp.get("alpha"))
    inp = cmp.get("inputs") if isinstance(cmp.get("inputs"), dict) else {}
    sources = inp.get("methods") if isinstance(inp.get("methods"), dict) else {}
    methods = ", ".join(f"{m} ({sources[m].get('source')})" if isinstance(sources.get(m), dict) else str(m)
                        for m in cmp.get("methods_order") or [])
    pairs: Dict[Tuple[str, str], List[dict]] = {}
    for t in cmp["tests"]:
        pairs.setdefault((str(t.get("method_a")), str(t.get("method_b"))), []).append(dict(
            {k: t.get(k) for k in ("n", "n_dropped_nan", "mean_a", "mean_b", "mean_diff", "p_value")},
            subset=str(t.get("subset", "")), label=f"{t.get('label', '')} {t.get('label_name', '')}".strip(),
            metric=METRIC_TITLES.get(t.get("metric"), str(t.get("metric"))), significant=bool(t.get("significant")),
            better=str(t.get("better") or "-"), note=str(t.get("note") or ""),
            cases=f"{t.get('a_better_cases', '-')} / {t.get('b_better_cases', '-')} / {t.get('tied_cases', '-')}"))
    return {
        "alpha": f"{alpha:g}",
        "facts": [("file", str(path)), ("methods", methods),
                  ("surface Dice tolerance", f"{_float(cmp.get('tolerance_mm')):g} mm"),
                  ("test", "two-sided Wilcoxon signed-rank test of the paired per-case values"),
                  ("alpha", f"{alpha:g}"), ("compared", cmp.get("created", "unknown"))],
        "notes": [str(n) for n in cmp.get("notes") or []],
        "pairs": [{"a": a, "b": b, "tests": tests} for (a, b), tests in pairs.items()],
    }


def _definitions(metrics: Sequence[Tuple[Path, dict]], cmp_path: Optional[Path], cmp: Optional[dict]) -> List[dict]:
    """The definitions of each JSON, each entry shown once (the first file that has it)."""
    sources = [(p, r["definitions"]) for p, r in metrics if isinstance(r.get("definitions"), dict)]
    if cmp is not None and isinstance(cmp.get("definitions"), dict):
        sources.append((cmp_path, cmp["definitions"]))
    shown: Dict[str, str] = {}
    out = []
    for path, defs in sources:
        new = {str(k): str(v) for k, v in defs.items() if shown.get(str(k)) != str(v)}
        if new:
            out.append({"path": path, "first": not shown, "entries": new})
            shown.update(new)
    return out


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("nnunet_cmedl.evaluation", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, finalize=lambda v: "" if v is None else v)
    env.filters.update(fmt=fmt, fmt_p=fmt_p, fmt_mean_sd=fmt_mean_sd, tooltip=tooltip, data_uri=png_data_uri)
    return env


def build_html(model: dict, metrics: Sequence[Tuple[Path, dict]] = (), comparison: Optional[Tuple[Path, dict]] = None,
               panels: Optional[dict] = None, title: Optional[str] = None) -> str:
    """The page (templates/report.html) of ``load_model``'s dict, (path, ``load_metrics_json``) pairs, a (path,
    ``load_comparison_json``) pair and ``load_panels``'s dict; a section whose input is missing says 'not provided'."""
    title = title or (f"{model['trainer_name']}: {model['dataset_name']} ({model['configuration']}, "
                      f"fold {model['fold']})")
    cmp_path, cmp = comparison if comparison is not None else (None, None)
    return _environment().get_template(TEMPLATE).render(
        title=title, header=_header(model), curves=_curves(model), metric_titles=[METRIC_TITLES[m] for m in METRICS],
        metrics=[_metrics_file(p, r) for p, r in metrics],
        comparison=_comparison(cmp_path, cmp) if cmp is not None else None, panels=panels,
        definitions=_definitions(metrics, cmp_path, cmp))


# ---------------------------------------------------------------------------------------------------- API and CLI

PathLike = Union[str, os.PathLike]


def write_report(model_folder: PathLike, output_html: PathLike, fold=0, metrics: Sequence[PathLike] = (),
                 comparison: Optional[PathLike] = None, panels: Optional[PathLike] = None,
                 title: Optional[str] = None, overwrite: bool = False, trust_checkpoint: bool = False) -> Path:
    """Write the HTML report of ``model_folder``/fold_``fold`` to ``output_html`` (atomically) and return its path.

    metrics: evaluation JSONs of ``nnunet_cmedl evaluate``; comparison: a JSON of ``nnunet_cmedl compare``;
    panels: a folder of PNGs (captions from its index.json). Missing optional inputs give a 'not provided' section;
    bad inputs raise UserInputError naming the file. An existing output is refused unless ``overwrite``; a checkpoint
    that holds arbitrary Python objects unless ``trust_checkpoint`` (checkpoint_io).
    """
    output_html = Path(output_html)
    if output_html.is_dir():
        raise UserInputError(f"{output_html}: output is a folder; give the path of the HTML file to write")
    refuse_existing(output_html, overwrite)
    if isinstance(metrics, (str, os.PathLike)):
        metrics = [metrics]
    model = load_model(model_folder, fold, trust_checkpoint)
    metric_results = [(Path(p).resolve(), load_metrics_json(p)) for p in metrics]
    cmp = (Path(comparison).resolve(), load_comparison_json(comparison)) if comparison is not None else None
    pan = load_panels(panels) if panels is not None else None
    text = build_html(model, metric_results, cmp, pan, title)
    with atomic_file(output_html, overwrite=overwrite, mode="wb") as f:
        f.write(text.encode("utf-8"))
    return output_html


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_cmedl report",
        description="One self-contained HTML page for a trained model (nnUNetTrainerCMEDL or any nnU-Net v2 trainer): "
                    "header (dataset, trainer, configuration, fold, epochs), the training curves of every logged loss "
                    "(from the checkpoint, plus progress.png, progress_cmedl.png and the latest cmedl_snapshots PNG), "
                    "metric tables of 'nnunet_cmedl evaluate' JSONs, the method comparison of an 'nnunet_cmedl "
                    "compare' JSON, case panels and the metric definitions. Images are embedded; no script, no "
                    "external resource. Sections whose input is not given say 'not provided'.",
        epilog="the checkpoint is fold_X/checkpoint_final.pth, else checkpoint_latest.pth, else checkpoint_best.pth "
               "(the page says which).\nexample:\n  nnunet_cmedl report -m nnUNet_results/Dataset501_X/"
               "nnUNetTrainerCMEDL__nnUNetPlans__3d_fullres -f 0 --metrics eval_cmedl.json --comparison cmp.json "
               "--panels panels -o report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model-folder", required=True,
                   help="nnU-Net model folder (nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)")
    p.add_argument("-f", "--fold", default="0", help="fold number or 'all' (default: 0)")
    p.add_argument("--metrics", nargs="+", default=[], metavar="EVAL.json",
                   help="evaluation JSON(s) written by 'nnunet_cmedl evaluate' (one table each)")
    p.add_argument("--comparison", default=None, metavar="COMPARE.json",
                   help="comparison JSON written by 'nnunet_cmedl compare'")
    p.add_argument("--panels", default=None, metavar="PANELS_DIR",
                   help="folder of PNG case panels (e.g. from 'nnunet_cmedl panels'); captions from its index.json")
    p.add_argument("--title", default=None, help="page title (default: trainer, dataset, configuration, fold)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="HTML file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(TRUST_FLAG, action="store_true",
                   help="also load a checkpoint that holds Python objects other than tensors, numbers and text "
                        "(unpickling them may run code): only for files from a source you trust")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = write_report(args.model_folder, args.output, fold=args.fold, metrics=args.metrics,
                       comparison=args.comparison, panels=args.panels, title=args.title, overwrite=args.overwrite,
                       trust_checkpoint=args.trust_checkpoint)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
