"""Training figures: every CMEDL loss per epoch, and snapshots of CT / pseudo-MRI / real MRI / label."""
import os

import numpy as np

from nnunet_cmedl.plotting import default_style, largest_area_slice, save_figure, subplots

PANELS = (
    ("Generators", ("cmedl_G_adversarial", "cmedl_G_cycle", "cmedl_G_identity", "cmedl_G_nce", "cmedl_G_nce_identity")),
    ("Discriminators", ("cmedl_D",)),
    ("Segmentation (train)", ("cmedl_teacher_seg", "cmedl_student_seg", "train_losses")),
    ("Hint (student vs teacher features)", ("cmedl_hint",)),
    ("Validation loss", ("val_losses", "cmedl_teacher_val_loss")),
    ("Pseudo Dice (val)", ("mean_fg_dice", "cmedl_teacher_pseudo_dice_pmri")),
)
LABELS = {"train_losses": "student (nnU-Net train_losses)", "val_losses": "student on CT",
          "mean_fg_dice": "student on CT", "cmedl_teacher_pseudo_dice_pmri": "teacher on pMRI",
          "cmedl_teacher_val_loss": "teacher on pMRI"}


def plot_cmedl_progress(logs: dict, epoch: int, filename: str) -> None:
    """One panel per loss group, epochs 0..epoch (values logged so far), written next to nnU-Net's progress.png."""
    with default_style():
        _plot_cmedl_progress(logs, epoch, filename)


def _plot_cmedl_progress(logs: dict, epoch: int, filename: str) -> None:
    fig, axes = subplots(2, 3, figsize=(18, 9))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            values = logs.get(key, [])[:epoch + 1]
            if values:
                ax.plot(range(len(values)), values, marker="o" if len(values) < 20 else None,
                        label=LABELS.get(key, key.replace("cmedl_", "")))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"CMEDL training losses (epoch {epoch})")
    fig.tight_layout()
    save_figure(fig, filename)


def snapshot_arrays(ct, pseudo_mri, mri, target) -> dict:
    """The batch sample with the most foreground, as numpy (first channel; highest-resolution target)."""
    label = target[0] if isinstance(target, list) else target
    i = int((label > 0).flatten(1).sum(1).argmax())
    return {name: t[i if name != "MRI (unpaired)" else 0, 0].detach().float().cpu().numpy()
            for name, t in (("CT", ct), ("pseudo-MRI", pseudo_mri), ("MRI (unpaired)", mri), ("label", label))}


def save_snapshot(arrays: dict, filename: str) -> None:
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    with default_style():
        _save_snapshot(arrays, filename)


def _save_snapshot(arrays: dict, filename: str) -> None:
    z = 0 if arrays["label"].ndim == 2 else largest_area_slice(arrays["label"])
    fig, axes = subplots(1, len(arrays), figsize=(4 * len(arrays), 4))
    for ax, (name, a) in zip(axes, arrays.items()):
        img = a if a.ndim == 2 else a[z]
        ax.imshow(img, cmap="viridis" if name == "label" else "gray",
                  **({} if name == "label" else dict(vmin=np.percentile(img, 1), vmax=np.percentile(img, 99))))
        lab = arrays["label"] if arrays["label"].ndim == 2 else arrays["label"][z]
        if name in ("CT", "pseudo-MRI") and (lab > 0).any():
            ax.contour(lab > 0, levels=[0.5], colors="r", linewidths=1)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle("CT patch, its pseudo-MRI (red: label), an unpaired MRI patch, the label" +
                 ("" if arrays["label"].ndim == 2 else f" (slice {z})"))
    fig.tight_layout()
    save_figure(fig, filename)
