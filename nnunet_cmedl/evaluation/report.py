"""``nnunet_cmedl report``: one self-contained HTML page for a trained model.

The page has, in order: a header (dataset, trainer, configuration, fold, checkpoint, epochs, dates, CMEDL
hyperparameters when nnU-Net's ``debug.json`` has them), the training curves of every logged loss (drawn here from
the checkpoint's logging dict, plus nnU-Net's ``progress.png``, our ``progress_cmedl.png`` and the latest
``cmedl_snapshots/*.png``), the metric tables of ``nnunet_cmedl evaluate`` JSONs, the method comparison of an
``nnunet_cmedl compare`` JSON, case panels (PNG folder, captions from its ``index.json``) and the metric definitions
copied from the JSONs. Images are embedded as base64 PNG data URIs and the CSS is inline: the file can be mailed or
archived on its own (no script, no external resource).

Python API: ``write_report(model_folder, output_html, fold=0, metrics=(), comparison=None, panels=None, title=None,
overwrite=False) -> Path``.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from nnunet_cmedl.checkpoint_io import TRUST_FLAG, load_checkpoint
from nnunet_cmedl.errors import UserInputError
from mri_unpaired.atomic import atomic_file, refuse_existing

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVALUATE_TOOL = "nnunet_cmedl evaluate"
COMPARE_TOOL = "nnunet_cmedl compare"
METRICS = ("dsc", "sdsc", "hd95")
METRIC_TITLES = {"dsc": "DSC", "sdsc": "sDSC", "hd95": "HD95 (mm)"}

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

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #ccd;padding-bottom:3px;margin-top:36px}
h3{margin-top:22px}table{border-collapse:collapse;margin:8px 0 14px;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef0f6}tr:nth-child(even) td{background:#fafafc}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:220px}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
figure{margin:10px 0 22px}figcaption{font-size:0.9em;color:#444}.note{color:#7a4b00;background:#fff6e0;
padding:6px 10px;border-left:4px solid #e0a000;margin:8px 0}.absent{color:#666;font-style:italic}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}code{background:#f2f2f5;padding:0 3px}
dl dt{font-weight:600;margin-top:6px}dl dd{margin-left:18px}td.sig{font-weight:700}
nav a{margin-right:14px}
"""


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


def esc(x) -> str:
    return html.escape("" if x is None else str(x))


class _Cell(str):
    """A ready-made <td> (other table cells are plain text and get escaped)."""


def _num_cell(text: str, exact=None, cls: str = "num") -> str:
    title = ""
    if exact is not None and not isinstance(exact, (bool, str)):
        title = f' title="{esc(repr(_float(exact)))}"'
    return _Cell(f'<td class="{cls}"{title}>{esc(text)}</td>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """rows: lists of _Cell (ready-made <td>) or plain strings (escaped here)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(c if isinstance(c, _Cell) else f"<td>{esc(c)}</td>" for c in r)
        body.append(f"<tr>{cells}</tr>")
    return f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><tr>{head}</tr>{"".join(body)}</table>'


def _kv_table(items: Sequence[Tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _absent(text: str) -> str:
    return f'<p class="absent">{esc(text)}</p>'


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(data)}" alt="{esc(alt)}">{cap}</figure>'


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


def plot_curves(logging: dict, cmedl: bool, class_names: Optional[Sequence[str]] = None) -> bytes:
    """PNG of every logged curve: CMEDL's panels (figures.PANELS) or nnU-Net's stock ones, plus lr, epoch time."""
    from matplotlib.ticker import MaxNLocator
    from nnunet_cmedl.plotting import subplots
    from nnunet_cmedl.training.figures import LABELS

    labels = dict(LABELS, ema_fg_dice="student EMA on CT") if cmedl else \
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


def _caption_index(index, folder: Path) -> Dict[str, str]:
    """Captions from index.json: {file: caption}, {file: {caption|title: ...}}, or a list of
    {file|png|path|filename|image: ..., caption|title|description: ...} (also under a 'panels'/'images' key)."""
    if isinstance(index, dict):
        for k in ("panels", "images", "files", "cases"):
            if isinstance(index.get(k), list):
                index = index[k]
                break
    out: Dict[str, str] = {}

    def caption_of(v) -> Optional[str]:
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            for k in ("caption", "title", "description", "label"):
                if isinstance(v.get(k), str):
                    return v[k]
            return _panel_entry_caption(v)
        return None

    if isinstance(index, dict):
        for k, v in index.items():
            c = caption_of(v)
            if c is not None:
                out[str(k)] = c
    elif isinstance(index, list):
        for v in index:
            if not isinstance(v, dict):
                continue
            name = next((v[k] for k in ("file", "png", "path", "filename", "image", "name")
                         if isinstance(v.get(k), str)), None)
            c = caption_of(v)
            if name is not None and c is not None:
                out[name] = c
    normalized = {}
    for k, c in out.items():
        p = Path(k)
        try:
            rel = (p.relative_to(folder) if p.is_absolute() else p).as_posix()
        except ValueError:
            rel = p.name
        normalized[rel] = c
        normalized.setdefault(p.name, c)
    return normalized


def load_panels(folder) -> dict:
    """Every PNG under ``folder`` (sorted by relative path) with its caption from index.json if there is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: panels folder does not exist or is not a folder")
    index_path = folder / "index.json"
    captions: Dict[str, str] = {}
    note = description = None
    if index_path.is_file():
        from nnunet_cmedl.evaluation.tables import read_json
        index = read_json(index_path, "panels index.json")
        captions = _caption_index(index, folder)
        description = _index_description(index)
        if not captions:
            note = f"{index_path.name}: no captions found in it (expected {{file: caption}} or a list of " \
                   "{file, caption} entries); panels shown with their file names"
    items, skipped = [], []
    for p in sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".png"),
                    key=lambda p: p.relative_to(folder).as_posix()):
        rel = p.relative_to(folder).as_posix()
        data = _read_png(p)
        if data is None:
            skipped.append(rel)
            continue
        items.append({"name": rel, "data": data, "caption": captions.get(rel, captions.get(p.name))})
    return {"folder": folder.resolve(), "items": items, "skipped": skipped, "note": note, "description": description,
            "index": index_path.name if index_path.is_file() else None}


# ---------------------------------------------------------------------------------------------------- sections

def _header_section(model: dict, title: str) -> str:
    epochs = model["current_epoch"]
    items = [
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
    out = [f"<h1>{esc(title)}</h1>", _kv_table(items)]
    hp = list(model["hyperparameters"])
    if model["i2i_kwargs"]:
        hp += [(f"i2i: {k}", str(v)) for k, v in model["i2i_kwargs"].items()]
    if hp:
        out.append("<details><summary>Hyperparameters (fold folder's debug.json and the checkpoint)</summary>"
                   + _kv_table(hp) + "</details>")
    else:
        out.append(_absent("Hyperparameters: not available (no debug.json in the fold folder)."))
    return "\n".join(out)


def _curves_section(model: dict) -> str:
    logging = model["logging"]
    out = ['<h2 id="curves">Training curves</h2>']
    if not model["is_cmedl"]:
        out.append(_note(f"The CMEDL curves are absent: this checkpoint's logging has no cmedl_* values, so the model "
                         f"is not a CMEDL model (trainer {model['trainer_name']}); only nnU-Net's own curves are "
                         "shown."))
    out.append(_img(plot_curves(logging, model["is_cmedl"], model["class_names"]), "training curves",
                    f"Every per-epoch value in the logging of {model['checkpoint'].name}."))
    curves = curves_from_logging(logging)
    rows = []
    for key, values in curves.items():
        finite = [v for v in values if not math.isnan(v)]
        base = key.split("[")[0]
        desc = CURVE_DESCRIPTIONS.get(base, "")
        if base == "dice_per_class_or_region":
            i = int(key[len(base) + 1:-1])
            names = model["class_names"]
            desc = f"student: pseudo Dice of {names[i] if names and i < len(names) else f'class / region {i}'} (val)"
        last = values[-1] if values else float("nan")
        rows.append([_Cell(f"<td><code>{esc(key)}</code></td>"), desc, _num_cell(str(len(values))),
                     _num_cell(str(len(finite))), _num_cell(fmt(values[0] if values else float("nan"), 4),
                                                            values[0] if values else None),
                     _num_cell(fmt(last, 4), last), _num_cell(fmt(min(finite) if finite else float("nan"), 4)),
                     _num_cell(fmt(max(finite) if finite else float("nan"), 4))])
    out.append("<h3>Logged values</h3>")
    out.append(_table(["key", "what", "epochs", "finite", "first", "last", "min", "max"], rows))
    pics = [("progress.png (nnU-Net)", model["progress_png"]),
            ("progress_cmedl.png (CMEDL)", model["progress_cmedl_png"])]
    for label, p in pics:
        data = _read_png(p) if p.is_file() else None
        out.append(f"<h3>{esc(label)}</h3>")
        out.append(_img(data, label, str(p)) if data else
                   _absent(f"{p.name}: not present in {model['fold_folder']}" if not p.is_file()
                           else f"{p.name}: not a readable PNG"))
    snap, n = model["snapshot"]
    out.append("<h3>Latest training snapshot (cmedl_snapshots)</h3>")
    data = _read_png(snap) if snap is not None else None
    if data:
        out.append(_img(data, snap.name, f"{snap.name} (the latest of {n} snapshot(s) in {snap.parent})"))
    else:
        out.append(_absent("no snapshot PNG in cmedl_snapshots/ (not present)" if snap is None
                           else f"{snap}: not a readable PNG"))
    return "\n".join(out)


def _aggregate_table(labels, label_names, aggregates, group: Optional[str] = None) -> str:
    headers = ([] if group is None else ["group"]) + ["label", "name"]
    for m in METRICS:
        headers += [f"{METRIC_TITLES[m]} mean ± sd", "median", "n", "n_nan"]
    rows = []
    for k in labels:
        a = aggregates.get(str(k)) if isinstance(aggregates, dict) else None
        if not isinstance(a, dict):
            continue
        row = ([] if group is None else [group]) + [str(k), label_names.get(str(k), "")]
        for m in METRICS:
            s = a.get(m) if isinstance(a.get(m), dict) else {}
            row += [_num_cell(fmt_mean_sd(s.get("mean"), s.get("sd")), s.get("mean")),
                    _num_cell(fmt(s.get("median")), s.get("median")),
                    _num_cell(fmt(s.get("n"))), _num_cell(fmt(s.get("n_nan")))]
        rows.append(row)
    return _table(headers, rows)


def _metrics_section(metrics: Sequence[Tuple[Path, dict]]) -> str:
    out = ['<h2 id="metrics">Segmentation metrics</h2>']
    if not metrics:
        out.append(_absent("Metrics: not provided (pass --metrics EVAL.json written by 'nnunet_cmedl evaluate')."))
        return "\n".join(out)
    for path, res in metrics:
        inp = res.get("inputs") if isinstance(res.get("inputs"), dict) else {}
        labels = [str(k) for k in res["labels"]]
        names = res.get("label_names") if isinstance(res.get("label_names"), dict) else {}
        out.append(f"<h3>{esc(path.name)}</h3>")
        out.append(_kv_table([("file", str(path)), ("predictions", inp.get("pred_folder", "unknown")),
                              ("references", inp.get("ref_folder", "unknown")),
                              ("cases", inp.get("n_cases", len({r.get('case') for r in res['per_case']
                                                                 if isinstance(r, dict)}))),
                              ("surface Dice tolerance", f"{_float(res.get('tolerance_mm')):g} mm"),
                              ("evaluated", res.get("created", "unknown"))]))
        for key, what in (("missing_predictions", "reference cases without prediction (skipped)"),
                          ("labels_only_in_predictions", "labels found only in predictions (not evaluated)")):
            if inp.get(key):
                out.append(_note(f"{what}: {', '.join(map(str, inp[key]))}"))
        out.append("<p>Per label, over the cases (NaN values skipped: n used, n_nan skipped; HD95 is NaN where "
                   "exactly one mask is empty).</p>")
        out.append(_aggregate_table(labels, names, res["aggregates"]))
        groups = res.get("group_aggregates")
        if isinstance(groups, dict) and groups:
            out.append("<h4>Per case group</h4>")
            out.append("\n".join(_aggregate_table(labels, names, aggs, group=str(g)) for g, aggs in groups.items()))
        rows = []
        for r in res["per_case"]:
            if not isinstance(r, dict):
                continue
            rows.append([str(r.get("case", "")), str(r.get("group") or ""), str(r.get("label", "")),
                         str(r.get("label_name", "")), _num_cell(fmt(r.get("dsc")), r.get("dsc")),
                         _num_cell(fmt(r.get("sdsc")), r.get("sdsc")), _num_cell(fmt(r.get("hd95")), r.get("hd95")),
                         "yes" if r.get("hd95_undefined") else "no", _num_cell(fmt(r.get("ref_voxels"))),
                         _num_cell(fmt(r.get("pred_voxels")))])
        out.append(f"<details><summary>Per case ({len(rows)} rows)</summary>"
                   + _table(["case", "group", "label", "name", "DSC", "sDSC", "HD95 (mm)", "HD95 undefined",
                             "reference voxels", "predicted voxels"], rows) + "</details>")
    return "\n".join(out)


def _comparison_section(path: Optional[Path], cmp: Optional[dict]) -> str:
    out = ['<h2 id="comparison">Method comparison</h2>']
    if cmp is None:
        out.append(_absent("Comparison: not provided (pass --comparison COMPARE.json written by "
                           "'nnunet_cmedl compare')."))
        return "\n".join(out)
    alpha = _float(cmp.get("alpha"))
    methods = cmp.get("methods_order") or []
    inp = cmp.get("inputs") if isinstance(cmp.get("inputs"), dict) else {}
    sources = inp.get("methods") if isinstance(inp.get("methods"), dict) else {}
    out.append(_kv_table([("file", str(path)), ("methods", ", ".join(
        f"{m} ({sources[m].get('source')})" if isinstance(sources.get(m), dict) else str(m) for m in methods)),
        ("surface Dice tolerance", f"{_float(cmp.get('tolerance_mm')):g} mm"),
        ("test", "two-sided Wilcoxon signed-rank test of the paired per-case values"),
        ("alpha", f"{alpha:g}"), ("compared", cmp.get("created", "unknown"))]))
    for n in cmp.get("notes") or []:
        out.append(_note(str(n)))
    pairs: Dict[Tuple[str, str], List[dict]] = {}
    for t in cmp["tests"]:
        pairs.setdefault((str(t.get("method_a")), str(t.get("method_b"))), []).append(t)
    if not pairs:
        out.append(_absent("the comparison JSON has no test"))
    for (a, b), tests in pairs.items():
        out.append(f"<h3>{esc(a)} vs {esc(b)}</h3>")
        rows = []
        for t in tests:
            sig = bool(t.get("significant"))
            rows.append([str(t.get("subset", "")), f"{t.get('label', '')} {t.get('label_name', '')}".strip(),
                         METRIC_TITLES.get(t.get("metric"), str(t.get("metric"))), _num_cell(fmt(t.get("n"))),
                         _num_cell(fmt(t.get("n_dropped_nan"))),
                         _num_cell(fmt(t.get("mean_a")), t.get("mean_a")),
                         _num_cell(fmt(t.get("mean_b")), t.get("mean_b")),
                         _num_cell(fmt(t.get("mean_diff")), t.get("mean_diff")),
                         _num_cell(fmt_p(t.get("p_value")), t.get("p_value"), "num sig" if sig else "num"),
                         "yes" if sig else "no", str(t.get("better") or "-"),
                         f"{t.get('a_better_cases', '-')} / {t.get('b_better_cases', '-')} / "
                         f"{t.get('tied_cases', '-')}", str(t.get("note") or "")])
        out.append(_table(["subset", "label", "metric", "n", "NaN pairs left out", f"mean {a}", f"mean {b}",
                           f"mean diff ({a} − {b})",
                           "p (Wilcoxon)", f"p < {alpha:g}", "better", f"cases {a} better / {b} better / tied",
                           "note"], rows))
    return "\n".join(out)


def _panels_section(panels: Optional[dict]) -> str:
    out = ['<h2 id="panels">Case panels</h2>']
    if panels is None:
        out.append(_absent("Case panels: not provided (pass --panels PANELS_DIR)."))
        return "\n".join(out)
    out.append(f"<p>{len(panels['items'])} PNG(s) from <code>{esc(panels['folder'])}</code>"
               + (f"; captions from {esc(panels['index'])}" if panels["index"] and not panels["note"] else "")
               + ".</p>")
    if panels["description"]:
        out.append(f"<p>{esc(panels['description'])}.</p>")
    if panels["note"]:
        out.append(_note(panels["note"]))
    if panels["skipped"]:
        out.append(_note(f"not readable as PNG (left out): {', '.join(panels['skipped'])}"))
    if not panels["items"]:
        out.append(_absent("no PNG in this folder"))
    for it in panels["items"]:
        cap = it["name"] if not it["caption"] else f"{it['name']}: {it['caption']}"
        out.append(_img(it["data"], it["name"], cap))
    return "\n".join(out)


def _definitions_section(metrics: Sequence[Tuple[Path, dict]], cmp_path: Optional[Path], cmp: Optional[dict]) -> str:
    out = ['<h2 id="definitions">Definitions</h2>']
    sources = [(p, r.get("definitions")) for p, r in metrics if isinstance(r.get("definitions"), dict)]
    if cmp is not None and isinstance(cmp.get("definitions"), dict):
        sources.append((cmp_path, cmp["definitions"]))
    if not sources:
        out.append(_absent("Definitions: not provided (they come from the --metrics / --comparison JSONs)."))
        return "\n".join(out)
    shown: Dict[str, str] = {}
    for path, defs in sources:
        new = {str(k): str(v) for k, v in defs.items() if shown.get(str(k)) != str(v)}
        if not new:
            continue
        first = not shown
        out.append(f"<p>From <code>{esc(path)}</code>{'' if first else ' (entries not already shown above)'}:</p>")
        out.append("<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in new.items()) + "</dl>")
        shown.update(new)
    return "\n".join(out)


def build_html(model: dict, metrics: Sequence[Tuple[Path, dict]] = (), comparison: Optional[Tuple[Path, dict]] = None,
               panels: Optional[dict] = None, title: Optional[str] = None) -> str:
    title = title or (f"{model['trainer_name']}: {model['dataset_name']} ({model['configuration']}, "
                      f"fold {model['fold']})")
    cmp_path, cmp = comparison if comparison is not None else (None, None)
    nav = ('<nav><a href="#curves">Training curves</a><a href="#metrics">Metrics</a><a href="#comparison">Comparison'
           '</a><a href="#panels">Case panels</a><a href="#definitions">Definitions</a></nav>')
    body = "\n".join([_header_section(model, title), nav, _curves_section(model), _metrics_section(metrics),
                      _comparison_section(cmp_path, cmp), _panels_section(panels),
                      _definitions_section(metrics, cmp_path, cmp)])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f'<meta name="generator" content="nnunet_cmedl report">\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n'
            '</body>\n</html>\n')


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
