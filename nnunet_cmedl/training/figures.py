"""Training figures: every CMEDL loss per epoch, and snapshots of the labelled image / its translation / a real unpaired
image / the label, named after the run's modalities (CT / pseudo-MRI / MRI in the paper's direction)."""
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


def curve_labels(labelled: str = "CT", unpaired: str = "MRI") -> dict:
    return {"train_losses": "student (nnU-Net train_losses)", "val_losses": f"student on {labelled}",
            "mean_fg_dice": f"student on {labelled}", "cmedl_teacher_pseudo_dice_pmri": f"teacher on pseudo-{unpaired}",
            "cmedl_teacher_val_loss": f"teacher on pseudo-{unpaired}"}


def plot_cmedl_progress(logs: dict, epoch: int, filename: str, labelled: str = "CT", unpaired: str = "MRI") -> None:
    """One panel per loss group, epochs 0..epoch (values logged so far), written next to nnU-Net's progress.png."""
    with default_style():
        _plot_cmedl_progress(logs, epoch, filename, curve_labels(labelled, unpaired))


def _plot_cmedl_progress(logs: dict, epoch: int, filename: str, labels: dict) -> None:
    fig, axes = subplots(2, 3, figsize=(18, 9))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            values = logs.get(key, [])[:epoch + 1]
            if values:
                ax.plot(range(len(values)), values, marker="o" if len(values) < 20 else None,
                        label=labels.get(key, key.replace("cmedl_", "")))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:  # a panel may stay empty (the paired-MRI oracle has no GAN losses)
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"CMEDL training losses (epoch {epoch})")
    fig.tight_layout()
    save_figure(fig, filename)


def snapshot_arrays(ct, pseudo_mri, mri, target, labelled: str = "CT", unpaired: str = "MRI") -> dict:
    """The batch sample with the most foreground, as numpy (first channel; highest-resolution target), keyed by the
    panel titles: labelled image, its translation, an unpaired image (first of its batch), 'label'."""
    label = target[0] if isinstance(target, list) else target
    i = int((label > 0).flatten(1).sum(1).argmax())
    return {name: t[j, 0].detach().float().cpu().numpy()
            for name, t, j in ((labelled, ct, i), (f"pseudo-{unpaired}", pseudo_mri, i),
                               (f"{unpaired} (unpaired)", mri, 0), ("label", label, i))}


def save_snapshot(arrays: dict, filename: str) -> None:
    os.makedirs(os.path.dirname(filename), exist_ok=True)
    with default_style():
        _save_snapshot(arrays, filename)


def _save_snapshot(arrays: dict, filename: str) -> None:
    z = 0 if arrays["label"].ndim == 2 else largest_area_slice(arrays["label"])
    fig, axes = subplots(1, len(arrays), figsize=(4 * len(arrays), 4))
    for k, (ax, (name, a)) in enumerate(zip(axes, arrays.items())):
        img = a if a.ndim == 2 else a[z]
        ax.imshow(img, cmap="viridis" if name == "label" else "gray",
                  **({} if name == "label" else dict(vmin=np.percentile(img, 1), vmax=np.percentile(img, 99))))
        lab = arrays["label"] if arrays["label"].ndim == 2 else arrays["label"][z]
        if k < 2 and (lab > 0).any():  # the labelled image and its translation
            ax.contour(lab > 0, levels=[0.5], colors="r", linewidths=1)
        ax.set_title(name)
        ax.axis("off")
    labelled, translated, unpaired = list(arrays)[:3]
    fig.suptitle(f"{labelled} patch, its {translated} (red: label), an unpaired {unpaired.split()[0]} patch, the "
                 f"label" +
                 ("" if arrays["label"].ndim == 2 else f" (slice {z})"))
    fig.tight_layout()
    save_figure(fig, filename)
