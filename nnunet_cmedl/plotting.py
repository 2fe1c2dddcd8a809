"""Figures without pyplot: matplotlib's object API renders to PNG with no global backend switch and no global
style, so importing a module that draws never changes the caller's matplotlib (nnU-Net's progress plot sets
seaborn's style globally; ours ignore it)."""
from contextlib import contextmanager

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mri_unpaired.atomic import atomic_path


@contextmanager
def default_style():
    """Matplotlib's defaults while a figure is built (nnU-Net's plot calls seaborn's set(font_scale=2.5))."""
    with matplotlib.rc_context(matplotlib.rcParamsDefault):
        yield


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kwargs):
    """(figure, axes) like pyplot.subplots, on a Figure that pyplot does not track (nothing to close)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colours() -> list:
    return matplotlib.rcParamsDefault["axes.prop_cycle"].by_key()["color"]


def save_figure(fig, filename, dpi: int = 80) -> None:
    """PNG, written under a temporary name and renamed: never a half-written file under the real name."""
    with atomic_path(filename) as tmp:
        fig.savefig(tmp, dpi=dpi)


def largest_area_slice(mask: np.ndarray) -> int:
    """Index along the first axis with the most foreground voxels (the middle slice if there is none)."""
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"expected an image of at least 2 dimensions, got shape {mask.shape}")
    areas = (mask > 0).reshape(mask.shape[0], -1).sum(1)
    return int(np.argmax(areas)) if areas.max() > 0 else mask.shape[0] // 2
