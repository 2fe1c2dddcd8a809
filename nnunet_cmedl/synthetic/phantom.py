"""Synthetic thorax phantom for CMEDL: one anatomy model in millimetres, two renderers (CT and T2w-like MRI).

An anatomy (body, fat, muscle, lungs, mediastinum, heart, aorta, pulmonary arteries, lung vessels, airways, spine,
ribs, collapsed lung, tumours) is a set of parameters drawn from a random generator. It is rendered on any grid into
a tissue map by sampling each voxel centre (no partial volume), and the tissue map is turned into CT or MRI values.
CT patients and MRI patients are drawn from separate random streams, so they never share anatomy.

The design that makes CMEDL's point: "lung" tumours sit in the lung parenchyma (hundreds of HU of contrast: easy).
"Mediastinal" tumours abut the mediastinum with a mean CT value within 4 HU of it, their lung side is covered by
collapsed lung (atelectasis) at nearly the same HU and half of them also touch a vessel of nearly the same HU, so
their CT boundary is truly ambiguous; only a faint low-frequency internal texture (a few HU) sets them apart. With
the default hard CT signal ("enhancing-atelectasis", HARD_CT_SIGNALS) the collapsed lung enhances 10-25 HU more than
the tumour, about one noise sd per voxel: a subtle but real edge on the lung side, while the mediastinal side stays
invisible.
In T2w MRI they are bright against an intermediate mediastinum and collapsed lung, i.e. clear.

Coordinates are millimetres in numpy axis order (z, y, x) with the origin at the centre of the field of view;
+x = patient left, +y = posterior, +z = superior, which is ITK's LPS, so a point here is the physical point that
SimpleITK reports for an image written with `Grid.origin_xyz`.
"""
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

from nnunet_cmedl.errors import UserInputError


class Tissue(IntEnum):
    AIR = 0  # outside the body
    FAT = 1
    MUSCLE = 2
    LUNG = 3
    MEDIASTINUM = 4
    HEART = 5
    VESSEL = 6
    AIRWAY = 7
    BONE_CORTEX = 8
    BONE_MARROW = 9
    DISC = 10
    CSF = 11
    ABDOMEN = 12  # liver/spleen below the diaphragm
    ATELECTASIS = 13
    TUMOUR = 14


N_TISSUES = len(Tissue)
# What a mediastinal tumour's CT boundary lies against (all within a few HU of the tumour).
SOFT_TISSUE_NEIGHBOURS = (Tissue.MEDIASTINUM, Tissue.HEART, Tissue.VESSEL, Tissue.ATELECTASIS)
MEDIASTINUM_LIKE = (Tissue.MEDIASTINUM, Tissue.HEART)

NOMINAL_FOV_MM = (160.0, 288.0, 384.0)  # (z, y, x): the default CT grid (32, 96, 128) at (5, 3, 3) mm covers it
MIN_FOV_MM = (80.0, 240.0, 340.0)  # the body is up to 232 x 336 mm; two hard tumours need ~80 mm of z
MAX_SPACING_MM = (12.0, 8.0, 8.0)  # coarser grids can miss small tumours entirely
MRI_SPACING_FACTOR = (0.8, 2 / 3, 2 / 3)  # MRI: thinner slices, finer in-plane than CT; (5, 3, 3) mm -> (4, 2, 2) mm
REFERENCE_CT_VOXEL_MM3 = 5.0 * 3.0 * 3.0  # the voxel for which the CT noise sd is given
TUMOUR_EXTENT = 1.35  # every tumour shape lies within this many nominal radii of its centre
SHELL_MM = 6.0  # contrasts are measured against the tissue within this distance of a tumour

_STREAMS = {"ct_anatomy": 0, "ct_noise": 1, "mri_anatomy": 2, "mri_noise": 3, "ct_signal": 4,
            "paired_mri_noise": 5}  # the last: the oracle MRI of a CT patient (paired_mri.py)
# What sets a hard tumour apart in CT besides its faint texture ("none": nothing; its mean is within 4 HU of the
# mediastinum and of its collapsed lung). "enhancing-atelectasis": as on contrast-enhanced CT, the collapsed lung
# enhances more than the tumour, ATELECTASIS_ENHANCEMENT_HU above it, about one noise sd per voxel: the tumour's lung
# side is a subtle but real CT edge, its mediastinal side stays invisible.
HARD_CT_SIGNALS = ("enhancing-atelectasis", "none")
ATELECTASIS_ENHANCEMENT_HU = (10.0, 25.0)


def case_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, stream, case), so CT and MRI patients are different draws and a case does
    not change when the number of other cases does."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_STREAMS[stream], int(index))))


# ----------------------------------------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Grid:
    shape: tuple  # (z, y, x) voxels
    spacing: tuple  # (z, y, x) mm

    def axes(self):
        """Voxel-centre coordinates (mm) along z, y and x, centred on the field of view."""
        return tuple((np.arange(n, dtype=np.float64) - (n - 1) / 2) * s for n, s in zip(self.shape, self.spacing))

    @property
    def fov_mm(self):
        return tuple(n * s for n, s in zip(self.shape, self.spacing))

    @property
    def origin_xyz(self):
        """Physical point of voxel (0, 0, 0) in SimpleITK's (x, y, z) order."""
        return tuple(-(n - 1) / 2 * s for n, s in zip(self.shape[::-1], self.spacing[::-1]))

    @property
    def spacing_xyz(self):
        return tuple(float(s) for s in self.spacing[::-1])

    def voxel_of(self, point_zyx):
        return tuple(p / s + (n - 1) / 2 for p, s, n in zip(point_zyx, self.spacing, self.shape))


def default_ct_spacing(ct_shape) -> tuple:
    """Spacing that makes `ct_shape` cover the nominal thorax field of view; (32, 96, 128) -> (5, 3, 3) mm."""
    return tuple(f / n for f, n in zip(NOMINAL_FOV_MM, ct_shape))


def default_mri_grid(ct_grid: Grid) -> Grid:
    """The MRI covers the same physical field as the CT on its own, finer grid."""
    spacing = tuple(s * f for s, f in zip(ct_grid.spacing, MRI_SPACING_FACTOR))
    shape = tuple(max(1, int(round(fov / s))) for fov, s in zip(ct_grid.fov_mm, spacing))
    return Grid(shape, spacing)


def check_grid(grid: Grid, setting: str) -> None:
    """The grid must cover the thorax and resolve the smallest hard tumour (radius 9 mm) in every case."""
    fov = grid.fov_mm
    if any(s > m for s, m in zip(grid.spacing, MAX_SPACING_MM)):
        raise UserInputError(
            f"{setting}: spacing {tuple(round(s, 3) for s in grid.spacing)} mm (z, y, x) is too coarse for the "
            f"phantom's tumours; at most {MAX_SPACING_MM} mm (use a larger shape or a smaller spacing)")
    if any(f < m for f, m in zip(fov, MIN_FOV_MM)):
        raise UserInputError(
            f"{setting}: shape {tuple(grid.shape)} x spacing {tuple(round(s, 3) for s in grid.spacing)} mm covers "
            f"{tuple(round(f) for f in fov)} mm (z, y, x), too small for the phantom thorax, which needs at least "
            f"{MIN_FOV_MM} mm; use a larger shape or spacing")


# -------------------------------------------------------------------------------------------- anatomy description
@dataclass
class Tube:
    """A capsule: all points within `radius` of the segment start-end (mm, z y x)."""
    start: np.ndarray
    end: np.ndarray
    radius: float


@dataclass
class Lung:
    side: int  # -1 = patient right, +1 = patient left
    centre_yx: tuple
    semi_axes_yx: tuple
    exponent: float  # superellipse exponent of the cross-section
    z_centre: float  # the cross-section shrinks away from z_centre (towards the apex)
    z_half_length: float
    dome_z: float  # top of the diaphragm dome under this lung
    dome_depth: float  # how far the dome falls off towards the lung's edge


@dataclass
class Wedge:
    """Collapsed lung: a collar of radius `collar` around `apex` (the tumour centre) plus an in-plane sector from
    `apex` towards `direction` (radians, atan2(y, x)) that tapers in z. The collar is a sphere, not the tumour's own
    outline, so the collapsed lung's edge does not trace the tumour's shape."""
    apex: np.ndarray
    direction: float
    half_angle: float
    reach: float
    z_half: float
    collar: float


@dataclass
class Tumour:
    centre: np.ndarray  # mm, z y x
    radius: float  # nominal radius; the shape lies within TUMOUR_EXTENT * radius
    location: str  # "lung" (parenchyma: easy) or "mediastinal" (abutting the mediastinum: hard)
    side: int
    shape: str  # "lobulated" (union of spheres) or "perturbed ellipsoid"
    lobes: list = field(default_factory=list)  # (offset from centre, radius) of each sphere
    semi_axes: np.ndarray = None
    rotation: np.ndarray = None  # columns: the ellipsoid's axes
    ripples: list = field(default_factory=list)  # (direction, frequency, phase, amplitude) of the radial ripple
    ct_mean_hu: float = 40.0
    ct_texture_sd_hu: float = 4.0
    mri_mean: float = 650.0
    mri_texture_sd: float = 30.0
    atelectasis: Wedge = None
    atelectasis_ct_hu: float = None
    atelectasis_mri: float = None
    atelectasis_enhancement_hu: float = 0.0  # included in atelectasis_ct_hu (HARD_CT_SIGNALS)
    vessel: Tube = None


@dataclass
class Anatomy:
    fov_mm: tuple
    body_semi_axes_yx: tuple
    body_exponent: float
    taper: float  # fractional narrowing of the chest per 100 mm towards the head
    fat_thickness: float
    muscle_thickness: float
    posterior_muscle_thickness: float  # extra posterior muscle (paraspinal) behind the thoracic cavity
    lungs: list
    heart_centre: np.ndarray
    heart_semi_axes: np.ndarray
    heart_angle: float
    great_vessels: list  # aorta and pulmonary arteries (Tube)
    lung_vessels: list
    airways: list
    spine_y: float
    spine_radius: float
    canal_radius: float
    disc_pitch: float
    disc_phase: float
    disc_thickness: float
    rib_pitch: float
    rib_phase: float
    rib_width: float
    rib_depth: float
    rib_tilt: float
    ct_hu: dict  # Tissue -> HU
    lung_gradient_hu: float  # posterior (dependent) lung is denser: HU per 100 mm of y
    ct_noise_sd_hu: float  # for a 5 x 3 x 3 mm voxel; see ct_noise_sd
    mri_value: dict  # Tissue -> T2w intensity (arbitrary units)
    mri_noise_sd: float
    mri_bias_coefficients: np.ndarray
    tumours: list = field(default_factory=list)

    @property
    def cavity_semi_axes(self):
        """(anterior y, posterior y, x) semi-axes of the thoracic cavity (inside fat, muscle and paraspinal muscle)."""
        ay, ax = self.body_semi_axes_yx
        wall = self.fat_thickness + self.muscle_thickness
        return ay - wall, ay - wall - self.posterior_muscle_thickness, ax - wall

    def lung(self, side: int) -> Lung:
        return next(l for l in self.lungs if l.side == side)


# ------------------------------------------------------------------------------------------------------ rendering
@dataclass
class TissueMaps:
    tissue: np.ndarray  # uint8 Tissue codes
    tumour_id: np.ndarray  # uint8: k for the k-th tumour (1-based), 0 elsewhere
    atelectasis_id: np.ndarray  # uint8: k where the collapsed lung belongs to the k-th tumour

    @property
    def label(self) -> np.ndarray:
        return (self.tumour_id > 0).astype(np.uint8)


def _lut(tissues) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[[int(t) for t in tissues]] = True
    return lut


_CAVITY_CONTENT = _lut([Tissue.MEDIASTINUM, Tissue.LUNG, Tissue.HEART, Tissue.ABDOMEN])
_LUNG_ONLY = _lut([Tissue.LUNG])
_INSIDE_BODY = _lut([t for t in Tissue if t != Tissue.AIR])
_CHEST_WALL = _lut([Tissue.MUSCLE, Tissue.FAT])
_STERNUM_BED = _lut([Tissue.MUSCLE, Tissue.FAT, Tissue.MEDIASTINUM])
_AIRWAY_BED = _lut([Tissue.MEDIASTINUM, Tissue.LUNG, Tissue.VESSEL])
_LESION_VESSEL_BED = _lut([Tissue.LUNG, Tissue.ATELECTASIS, Tissue.MEDIASTINUM])
_TUMOUR_BED = _lut([Tissue.LUNG, Tissue.MEDIASTINUM, Tissue.HEART, Tissue.VESSEL, Tissue.ATELECTASIS])


def _superellipse(Y, X, cy, cx, ay, ax, p):
    return np.abs((X - cx) / ax) ** p + np.abs((Y - cy) / ay) ** p


def _paint_box(maps_arrays, axes, lo, hi, inside_fn, bed_lut, value, id_value=None):
    """Paint `value` where inside_fn is true and the current tissue is in `bed_lut`, evaluating only the bounding box
    lo..hi (mm) of the shape. `maps_arrays` is (tissue, id_map or None)."""
    tissue, id_map = maps_arrays
    slices = tuple(slice(int(np.searchsorted(a, l, side="left")), int(np.searchsorted(a, h, side="right")))
                   for a, l, h in zip(axes, lo, hi))
    if any(s.start >= s.stop for s in slices):
        return
    Z = axes[0][slices[0]][:, None, None]
    Y = axes[1][slices[1]][None, :, None]
    X = axes[2][slices[2]][None, None, :]
    sub = tissue[slices]
    m = np.broadcast_to(inside_fn(Z, Y, X), sub.shape) & bed_lut[sub]
    sub[m] = value
    if id_map is not None:
        id_map[slices][m] = id_value


def _tube_inside(tube: Tube):
    p0 = tube.start
    v = tube.end - tube.start
    vv = max(float(v @ v), 1e-9)
    r2 = tube.radius ** 2

    def inside(Z, Y, X):
        dz, dy, dx = Z - p0[0], Y - p0[1], X - p0[2]
        t = np.clip((dz * v[0] + dy * v[1] + dx * v[2]) / vv, 0.0, 1.0)
        return (dz - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dx - t * v[2]) ** 2 <= r2
    return inside


def _tube_box(tube: Tube):
    return np.minimum(tube.start, tube.end) - tube.radius, np.maximum(tube.start, tube.end) + tube.radius


def _wedge_inside(w: Wedge):
    def inside(Z, Y, X):
        dy, dx = Y - w.apex[1], X - w.apex[2]
        rho = np.hypot(dy, dx)
        dz = Z - w.apex[0]
        off = np.abs((np.arctan2(dy, dx) - w.direction + np.pi) % (2 * np.pi) - np.pi)
        sector = (off <= w.half_angle) & (rho <= w.reach) & (np.abs(dz) <= w.z_half * (1 - 0.4 * rho / w.reach))
        return sector | (rho ** 2 + dz ** 2 <= w.collar ** 2)
    return inside


def _wedge_box(w: Wedge):
    half = np.array([max(w.z_half, w.collar), max(w.reach, w.collar), max(w.reach, w.collar)])
    return w.apex - half, w.apex + half


def _tumour_inside(t: Tumour):
    c = t.centre

    def inside(Z, Y, X):
        dz, dy, dx = Z - c[0], Y - c[1], X - c[2]
        if t.shape == "lobulated":
            m = False
            for offset, rho in t.lobes:
                m = m | ((dz - offset[0]) ** 2 + (dy - offset[1]) ** 2 + (dx - offset[2]) ** 2 <= rho ** 2)
            return m
        dz, dy, dx = np.broadcast_arrays(dz, dy, dx)
        d = np.stack([dz, dy, dx], axis=-1)
        q = d @ t.rotation  # coordinates along the ellipsoid's axes
        scaled = np.sqrt(np.sum((q / t.semi_axes) ** 2, axis=-1))
        u = d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-9)
        ripple = 1.0
        for direction, freq, phase, amp in t.ripples:
            ripple = ripple + amp * np.cos(freq * (u @ direction) + phase)
        return scaled <= ripple
    return inside


def _tumour_box(t: Tumour):
    half = TUMOUR_EXTENT * t.radius
    return t.centre - half, t.centre + half


def render_tissues(anatomy: Anatomy, axes, lesions: bool = True) -> TissueMaps:
    """Tissue map of `anatomy` sampled at the voxel centres given by `axes` (ascending z, y and x coordinates, mm).

    `lesions=False` leaves out the tumours and what was placed for them (their collapsed lung and vessels)."""
    a = anatomy
    zs, ys, xs = (np.asarray(v, dtype=np.float64) for v in axes)
    axes = (zs, ys, xs)
    Z, Y, X = zs[:, None, None], ys[None, :, None], xs[None, None, :]
    shape = (len(zs), len(ys), len(xs))
    tissue = np.zeros(shape, dtype=np.uint8)
    tumour_id = np.zeros(shape, dtype=np.uint8)
    atelectasis_id = np.zeros(shape, dtype=np.uint8)
    bed = lambda lut: lut[tissue]  # noqa: E731  (current tissue in a set)

    ay, ax = a.body_semi_axes_yx
    p = a.body_exponent
    narrowing = 1.0 - a.taper * Z / 100.0  # (nz, 1, 1): the chest narrows towards the head
    tissue[np.broadcast_to(_superellipse(Y, X, 0, 0, ay, ax * narrowing, p) <= 1, shape)] = Tissue.FAT
    f = a.fat_thickness
    tissue[np.broadcast_to(_superellipse(Y, X, 0, 0, ay - f, (ax - f) * narrowing, p) <= 1, shape)] = Tissue.MUSCLE
    cav_ant, cav_post, cav_x = a.cavity_semi_axes
    cav_y = np.where(Y < 0, cav_ant, cav_post)
    cavity_value = _superellipse(Y, X, 0, 0, cav_y, cav_x * narrowing, p)
    cavity = np.broadcast_to(cavity_value <= 1, shape)
    tissue[cavity] = Tissue.MEDIASTINUM

    # Diaphragm and lungs: each lung is a superellipse cylinder shrinking towards the apex, above a dome.
    dome_surface = {}
    for lung in a.lungs:
        cy, cx = lung.centre_yx
        ly, lx = lung.semi_axes_yx
        rho2 = ((X - cx) / lx) ** 2 + ((Y - cy) / ly) ** 2
        dome_surface[lung.side] = lung.dome_z - lung.dome_depth * rho2
    below_dome = Z < np.where(X < 0, dome_surface[-1], dome_surface[1])
    tissue[cavity & below_dome] = Tissue.ABDOMEN
    for lung in a.lungs:
        cy, cx = lung.centre_yx
        ly, lx = lung.semi_axes_yx
        scale = np.sqrt(np.clip(1 - ((Z - lung.z_centre) / lung.z_half_length) ** 2, 1e-6, 1.0))
        inside = _superellipse(Y, X, cy, cx, ly * scale, lx * scale, lung.exponent) <= 1
        tissue[cavity & inside & (Z > dome_surface[lung.side])] = Tissue.LUNG

    hc, hs, th = a.heart_centre, a.heart_semi_axes, a.heart_angle
    u = np.cos(th) * (X - hc[2]) + np.sin(th) * (Y - hc[1])
    v = -np.sin(th) * (X - hc[2]) + np.cos(th) * (Y - hc[1])
    heart = (u / hs[2]) ** 2 + (v / hs[1]) ** 2 + ((Z - hc[0]) / hs[0]) ** 2 <= 1
    tissue[cavity & heart] = Tissue.HEART

    for tube in a.great_vessels:
        _paint_box((tissue, None), axes, *_tube_box(tube), _tube_inside(tube), _CAVITY_CONTENT, Tissue.VESSEL)
    for tube in a.lung_vessels:
        _paint_box((tissue, None), axes, *_tube_box(tube), _tube_inside(tube), _LUNG_ONLY, Tissue.VESSEL)
    for tube in a.airways:  # after the vessels so the trachea and bronchi stay open
        _paint_box((tissue, None), axes, *_tube_box(tube), _tube_inside(tube), _AIRWAY_BED, Tissue.AIRWAY)

    # Spine: soft tissue rim, vertebral body (cortex, marrow, discs), canal, posterior arch, spinous process.
    R, sy = a.spine_radius, a.spine_y
    r_body = np.hypot(X, Y - sy)
    tissue[np.broadcast_to(r_body <= R + 4, shape) & bed(_LUNG_ONLY)] = Tissue.MEDIASTINUM
    in_disc = ((Z - a.disc_phase) % a.disc_pitch) < a.disc_thickness
    body_disk = np.broadcast_to(r_body <= R, shape)
    tissue[body_disk] = Tissue.BONE_CORTEX
    tissue[body_disk & np.broadcast_to(r_body <= R - 2.5, shape)] = Tissue.BONE_MARROW
    tissue[body_disk & np.broadcast_to(in_disc, shape)] = Tissue.DISC
    canal_y = sy + R + a.canal_radius + 2
    r_canal = np.hypot(X, Y - canal_y)
    arch = np.broadcast_to(r_canal <= a.canal_radius + 4, shape) & bed(_INSIDE_BODY)
    tissue[arch] = Tissue.BONE_CORTEX
    tissue[np.broadcast_to(r_canal <= a.canal_radius, shape)] = Tissue.CSF
    spinous = ((np.abs(X) < 3.5) & (Y > canal_y + a.canal_radius) & (Y < canal_y + a.canal_radius + 28)
               & (((Z - a.disc_phase) % a.disc_pitch) < 0.6 * a.disc_pitch))
    tissue[np.broadcast_to(spinous, shape) & bed(_INSIDE_BODY)] = Tissue.BONE_CORTEX

    # Ribs: arcs just outside the cavity, periodic in z and rising posteriorly; none at the anterior cartilages.
    ring = cavity_value ** (1 / p)
    rib_phase = (Z - a.rib_phase + a.rib_tilt * Y / cav_ant) % a.rib_pitch
    ribs = ((ring > 1.0) & (ring <= 1.0 + a.rib_depth / cav_x) & (rib_phase < a.rib_width)
            & ~((Y < 0) & (np.abs(X) < 40)) & ~(np.abs(X) < R + 8))
    tissue[np.broadcast_to(ribs, shape) & bed(_CHEST_WALL)] = Tissue.BONE_CORTEX
    sternum = (np.abs(X) < 16) & (Y > -cav_ant - 10) & (Y < -cav_ant + 1)
    tissue[np.broadcast_to(sternum, shape) & bed(_STERNUM_BED)] = Tissue.BONE_CORTEX

    if lesions:
        for t in a.tumours:
            if t.vessel is not None:
                _paint_box((tissue, None), axes, *_tube_box(t.vessel), _tube_inside(t.vessel), _LESION_VESSEL_BED,
                           Tissue.VESSEL)
        for k, t in enumerate(a.tumours, start=1):
            if t.atelectasis is not None:
                _paint_box((tissue, atelectasis_id), axes, *_wedge_box(t.atelectasis), _wedge_inside(t.atelectasis),
                           _LUNG_ONLY, Tissue.ATELECTASIS, k)
        for k, t in enumerate(a.tumours, start=1):
            _paint_box((tissue, tumour_id), axes, *_tumour_box(t), _tumour_inside(t), _TUMOUR_BED, Tissue.TUMOUR, k)
        atelectasis_id[tissue != Tissue.ATELECTASIS] = 0  # where a tumour covered its own collapsed lung
    return TissueMaps(tissue, tumour_id, atelectasis_id)


def _low_frequency_field(rng, shape, spacing, sigma_mm) -> np.ndarray:
    white = rng.standard_normal(shape, dtype=np.float32)
    return ndimage.gaussian_filter(white, sigma=[sigma_mm / s for s in spacing], mode="wrap")


def _standardised(values: np.ndarray) -> np.ndarray:
    """Zero mean and unit sd over the given voxels, so a tumour's texture does not move its mean."""
    values = values - values.mean()
    sd = values.std()
    return values / sd if sd > 1e-6 else values * 0


def _paint_tumours(image, maps, anatomy, texture, mean_attr, sd_attr, atelectasis_attr):
    for k, t in enumerate(anatomy.tumours, start=1):
        inside = maps.tumour_id == k
        if inside.any():
            image[inside] = getattr(t, mean_attr) + _standardised(texture[inside]) * getattr(t, sd_attr)
        if t.atelectasis is not None:
            image[maps.atelectasis_id == k] = getattr(t, atelectasis_attr)


def _restore_tumour_means(image, maps, anatomy, mean_attr):
    """Shift each tumour so its mean, noise included, is the designed one: the noise is correlated, so over a small
    tumour it averages to several HU, which would blur the designed 0-4 HU contrast of the hard tumours."""
    for k, t in enumerate(anatomy.tumours, start=1):
        inside = maps.tumour_id == k
        if inside.any():
            image[inside] += np.float32(getattr(t, mean_attr) - float(image[inside].mean()))


def ct_noise_sd(anatomy: Anatomy, grid: Grid) -> float:
    """Per-voxel noise sd (HU) on `grid`: `anatomy.ct_noise_sd_hu` holds for a 5 x 3 x 3 mm voxel and, as in CT at a
    fixed dose, it falls with the square root of the voxel volume, so a region's mean is as noisy on any grid."""
    return anatomy.ct_noise_sd_hu * float(np.sqrt(REFERENCE_CT_VOXEL_MM3 / np.prod(grid.spacing)))


def render_ct(anatomy: Anatomy, maps: TissueMaps, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """CT (HU, int16): tissue values, posterior lung density gradient, tumour texture, smoothed Gaussian noise."""
    lut = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, hu in anatomy.ct_hu.items():
        lut[tissue] = hu
    image = lut[maps.tissue]
    ys = grid.axes()[1][None, :, None]
    lung = maps.tissue == Tissue.LUNG
    image += lung * np.float32(anatomy.lung_gradient_hu / 100.0) * ys.astype(np.float32)
    texture = _low_frequency_field(rng, grid.shape, grid.spacing, sigma_mm=4.0)
    _paint_tumours(image, maps, anatomy, texture, "ct_mean_hu", "ct_texture_sd_hu", "atelectasis_ct_hu")
    # Slightly smoothed noise: CT noise has a texture (correlated over ~a voxel), not white salt-and-pepper.
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), sigma=(0.3, 0.8, 0.8))
    image += noise * np.float32(ct_noise_sd(anatomy, grid) / max(float(noise.std()), 1e-6))
    _restore_tumour_means(image, maps, anatomy, "ct_mean_hu")
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def render_mri(anatomy: Anatomy, maps: TissueMaps, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """T2w-like MRI (arbitrary units, int16): tissue values, tumour texture, smooth multiplicative bias field,
    Rician noise (magnitude of a complex signal with Gaussian noise in both channels)."""
    lut = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, value in anatomy.mri_value.items():
        lut[tissue] = value
    image = lut[maps.tissue]
    texture = _low_frequency_field(rng, grid.shape, grid.spacing, sigma_mm=4.0)
    _paint_tumours(image, maps, anatomy, texture, "mri_mean", "mri_texture_sd", "atelectasis_mri")
    half = [f / 2 for f in grid.fov_mm]
    w, v, u = (ax_ / h for ax_, h in zip(grid.axes(), half))
    w, v, u = w[:, None, None], v[None, :, None], u[None, None, :]
    c = anatomy.mri_bias_coefficients
    log_bias = c[0] * w + c[1] * v + c[2] * u + c[3] * w * v + c[4] * w * u + c[5] * v * u + c[6] * w ** 2 \
        + c[7] * v ** 2 + c[8] * u ** 2
    image *= np.exp(log_bias).astype(np.float32)
    sd = np.float32(anatomy.mri_noise_sd)
    real = image + sd * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sd * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.rint(np.hypot(real, imag)), 0, 32767).astype(np.int16)


# ------------------------------------------------------------------------------------------------------- sampling
def _unit(rng) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _sample_base_anatomy(rng, fov_mm) -> Anatomy:
    fz, fy, fx = fov_mm
    h = fz / 2
    U = rng.uniform
    ay = min(U(100, 116), fy / 2 - 6)
    ax = min(U(150, 168), fx / 2 - 6)
    fat, muscle, posterior = U(8, 20), U(8, 13), U(18, 28)
    cav_ant = ay - fat - muscle
    cav_post = cav_ant - posterior
    spine_radius = U(15, 19)
    spine_y = cav_post - 0.8 * spine_radius

    lungs = []
    for side in (-1, 1):
        lx = U(50, 60)
        cx = side * (U(18, 32) + lx)
        dome_z = -h + U(0.1, 0.4) * h + (U(5, 12) if side < 0 else 0.0)  # the liver lifts the right dome
        lungs.append(Lung(side=side, centre_yx=(U(-5, 10), cx), semi_axes_yx=(U(70, 85), lx),
                          exponent=U(2.0, 2.6), z_centre=U(-40, -15), z_half_length=U(140, 175),
                          dome_z=dome_z, dome_depth=U(40, 60)))

    heart_centre = np.array([-h + U(25, 50), U(-40, -25), U(15, 28)])
    heart_semi_axes = np.array([U(45, 55), U(38, 46), U(52, 62)])

    # Great vessels: ascending aorta from the heart, arch passing left of the trachea, descending aorta beside the
    # spine; pulmonary trunk from the heart to the two hila.
    carina_z = U(0.1, 0.4) * h
    trachea_y = spine_y - spine_radius - U(14, 20)
    r_desc = U(10, 13)
    desc = np.array([h - U(8, 25), spine_y - U(0.2, 0.5) * spine_radius, spine_radius + r_desc + U(2, 6)])
    asc_bottom = np.array([heart_centre[0] + U(10, 25), U(-25, -12), U(-12, -2)])
    asc_top = np.array([desc[0], asc_bottom[1], asc_bottom[2]])
    arch_mid = np.array([desc[0] + 6, U(-12, -5), desc[2] - 4])
    r_asc = U(13, 16)
    great_vessels = [
        Tube(asc_bottom, asc_top, r_asc), Tube(asc_top, arch_mid, r_asc), Tube(arch_mid, desc, r_desc + 1),
        Tube(desc, np.array([-h - 20, desc[1] - U(0, 5), desc[2] - U(0, 4)]), r_desc)]
    trunk_start = heart_centre + np.array([0.6 * heart_semi_axes[0], -5.0, -5.0])
    bifurcation = np.array([carina_z - U(10, 18), U(-15, -5), U(0, 8)])
    hila = {}
    great_vessels.append(Tube(trunk_start, bifurcation, U(11, 14)))
    for side in (-1, 1):
        hila[side] = np.array([carina_z - U(15, 30), U(-8, 8), side * U(40, 50)])
        great_vessels.append(Tube(bifurcation, hila[side], U(8, 10)))

    lung_vessels = []
    for side in (-1, 1):
        for _ in range(int(rng.integers(10, 16))):
            direction = np.array([U(-0.9, 0.9), U(-0.7, 0.7), side * U(0.4, 1.0)])
            direction /= np.linalg.norm(direction)
            start = hila[side] + rng.normal(0, 3, 3)
            length, radius = U(40, 100), U(2.5, 4.5)
            lung_vessels.append(Tube(start, start + direction * length, radius))
            for _ in range(2):
                branch_start = start + direction * length * U(0.3, 0.8)
                branch_dir = direction + rng.normal(0, 0.6, 3)
                branch_dir /= np.linalg.norm(branch_dir)
                lung_vessels.append(Tube(branch_start, branch_start + branch_dir * length * U(0.4, 0.7),
                                         max(1.5, radius * U(0.5, 0.75))))

    airways = [Tube(np.array([h + 20, trachea_y, 0.0]), np.array([carina_z, trachea_y, 0.0]), U(8, 10))]
    for side in (-1, 1):
        main = np.array([carina_z - U(20, 30), trachea_y + U(-5, 5), side * U(40, 50)])
        lobar = main + np.array([-40.0, U(0, 15), side * U(12, 22)])
        airways += [Tube(np.array([carina_z, trachea_y, 0.0]), main, U(5, 6.5)), Tube(main, lobar, 4.0)]

    m = U(36, 44)
    ct_hu = {Tissue.AIR: -1000.0, Tissue.AIRWAY: -1000.0, Tissue.FAT: U(-110, -90), Tissue.MUSCLE: U(40, 52),
             Tissue.LUNG: U(-850, -790), Tissue.MEDIASTINUM: m, Tissue.HEART: m + U(-2, 2),
             Tissue.VESSEL: m + U(-2, 2), Tissue.BONE_CORTEX: U(550, 700), Tissue.BONE_MARROW: U(250, 350),
             Tissue.DISC: U(70, 90), Tissue.CSF: U(5, 15), Tissue.ABDOMEN: U(52, 62), Tissue.ATELECTASIS: m,
             Tissue.TUMOUR: m}
    mri_value = {Tissue.AIR: 0.0, Tissue.AIRWAY: 0.0, Tissue.FAT: U(560, 660), Tissue.MUSCLE: U(170, 230),
                 Tissue.LUNG: U(15, 35), Tissue.MEDIASTINUM: U(260, 320), Tissue.HEART: U(90, 150),
                 Tissue.VESSEL: U(30, 60), Tissue.BONE_CORTEX: U(20, 40), Tissue.BONE_MARROW: U(330, 430),
                 Tissue.DISC: U(420, 520), Tissue.CSF: U(850, 950), Tissue.ABDOMEN: U(160, 220),
                 Tissue.ATELECTASIS: U(360, 430), Tissue.TUMOUR: U(600, 720)}
    bias = np.concatenate([U(-0.15, 0.15, 3), U(-0.1, 0.1, 6)])

    return Anatomy(
        fov_mm=tuple(fov_mm), body_semi_axes_yx=(ay, ax), body_exponent=U(2.2, 2.8), taper=U(0.0, 0.05),
        fat_thickness=fat, muscle_thickness=muscle, posterior_muscle_thickness=posterior, lungs=lungs,
        heart_centre=heart_centre, heart_semi_axes=heart_semi_axes, heart_angle=U(0.2, 0.6),
        great_vessels=great_vessels, lung_vessels=lung_vessels, airways=airways, spine_y=spine_y,
        spine_radius=spine_radius, canal_radius=U(7, 8.5), disc_pitch=U(26, 30), disc_phase=U(0, 30),
        disc_thickness=U(5, 7), rib_pitch=U(28, 34), rib_phase=U(0, 34), rib_width=U(9, 11), rib_depth=U(7, 10),
        rib_tilt=U(25, 40), ct_hu=ct_hu, lung_gradient_hu=U(20, 50), ct_noise_sd_hu=U(12, 20),
        mri_value=mri_value, mri_noise_sd=U(12, 22), mri_bias_coefficients=bias)


def _tumour_shape(rng, tumour: Tumour) -> None:
    r = tumour.radius
    if rng.random() < 0.5:
        tumour.shape = "lobulated"
        tumour.lobes = [(np.zeros(3), r)]
        for _ in range(int(rng.integers(1, 4))):
            d = rng.uniform(0.35, 0.6) * r
            tumour.lobes.append((_unit(rng) * d, min(rng.uniform(0.45, 0.7) * r, TUMOUR_EXTENT * r - d)))
    else:
        tumour.shape = "perturbed ellipsoid"
        tumour.semi_axes = r * rng.uniform(0.8, 1.15, 3)
        q, upper = np.linalg.qr(rng.standard_normal((3, 3)))
        tumour.rotation = q * np.sign(np.diag(upper))
        tumour.ripples = [(_unit(rng), rng.uniform(2, 5), rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.05))
                          for _ in range(3)]


def _local_tissue(anatomy: Anatomy, centre, half_mm, step=1.5):
    """Tissue around `centre` (fine grid, with the lesions placed so far) and each point's distance to it."""
    axes = tuple(np.arange(c - half_mm, c + half_mm + 1e-6, step) for c in centre)
    tissue = render_tissues(anatomy, axes).tissue
    dist = np.sqrt((axes[0][:, None, None] - centre[0]) ** 2 + (axes[1][None, :, None] - centre[1]) ** 2
                   + (axes[2][None, None, :] - centre[2]) ** 2)
    return tissue, dist


def _fractions(values: np.ndarray, tissues) -> float:
    return float(np.isin(values, [int(t) for t in tissues]).mean()) if values.size else 0.0


def _propose_mediastinal(rng, anatomy: Anatomy):
    """A tumour straddling the lung-mediastinum border, with collapsed lung and/or a vessel on its lung side."""
    U = rng.uniform
    h = anatomy.fov_mm[0] / 2
    r = U(9, 20)
    side = int(rng.choice([-1, 1]))
    lung = anatomy.lung(side)
    extent = TUMOUR_EXTENT * r
    z_lo, z_hi = max(-h + extent + 2, lung.dome_z + extent + 10), h - extent - 2
    cy, _ = lung.centre_yx
    ly, _ = lung.semi_axes_yx
    y_lo, y_hi = cy - 0.6 * ly, min(cy + 0.5 * ly, anatomy.spine_y - anatomy.spine_radius - extent - 4)
    if z_lo >= z_hi or y_lo >= y_hi:
        return None
    z, y = U(z_lo, z_hi), U(y_lo, y_hi)
    xs = np.arange(-anatomy.fov_mm[2] / 2, anatomy.fov_mm[2] / 2, 1.0)
    line = render_tissues(anatomy, (np.array([z]), np.array([y]), xs)).tissue[0, 0]
    outward = np.argsort(np.where(side * xs >= 0, np.abs(xs), np.inf), kind="stable")
    outward = outward[side * xs[outward] >= 0]
    border = next((i for i in outward if line[i] == Tissue.LUNG), None)
    if border is None:
        return None
    centre = np.array([z, y, xs[border] + side * U(0.1, 0.45) * r])
    m = anatomy.ct_hu[Tissue.MEDIASTINUM]
    ct_mean = m + float(rng.choice([-1, 1])) * U(0, 4)
    tumour = Tumour(centre=centre, radius=r, location="mediastinal", side=side, shape="",
                    ct_mean_hu=ct_mean, ct_texture_sd_hu=U(3, 5), mri_mean=U(600, 720), mri_texture_sd=U(25, 40))
    _tumour_shape(rng, tumour)
    # Collapsed lung always covers the lung side: where that side showed, ~800 HU of contrast against lung would
    # outline the tumour. Half of them also touch a vessel.
    lateral = 0.0 if side > 0 else np.pi
    tumour.atelectasis = Wedge(apex=centre.copy(), direction=lateral + U(-0.8, 0.8), half_angle=U(0.9, 1.3),
                               reach=extent + U(12, 30), z_half=r + U(5, 15), collar=extent + U(3, 10))
    tumour.atelectasis_ct_hu = ct_mean + U(-3, 3)
    tumour.atelectasis_mri = anatomy.mri_value[Tissue.ATELECTASIS] + U(-20, 20)
    if rng.random() < 0.5:
        angle = lateral + float(rng.choice([-1, 1])) * U(0.7, 1.6)
        radius = U(4, 7)
        offset = (0.95 * r + 0.6 * radius) * np.array([0.0, np.sin(angle), np.cos(angle)])
        direction = np.array([1.0, U(-0.3, 0.3), U(-0.3, 0.3)])
        direction /= np.linalg.norm(direction)
        half_length = U(25, 45)
        tumour.vessel = Tube(centre + offset - direction * half_length, centre + offset + direction * half_length,
                             radius)
    return tumour


def _mediastinal_fits(anatomy: Anatomy, tumour: Tumour) -> bool:
    extent = TUMOUR_EXTENT * tumour.radius
    tissue, dist = _local_tissue(anatomy, tumour.centre, extent + 8)
    inner, outer = tissue[dist <= extent], tissue[dist <= extent + 8]
    allowed_inner = (Tissue.LUNG, Tissue.MEDIASTINUM, Tissue.HEART, Tissue.VESSEL)
    forbidden_outer = (Tissue.TUMOUR, Tissue.ATELECTASIS, Tissue.AIRWAY, Tissue.BONE_CORTEX, Tissue.BONE_MARROW,
                       Tissue.DISC, Tissue.CSF, Tissue.ABDOMEN, Tissue.FAT, Tissue.MUSCLE, Tissue.AIR)
    return (_fractions(inner, allowed_inner) == 1.0 and _fractions(outer, forbidden_outer) == 0.0
            and _fractions(inner, (Tissue.LUNG,)) >= 0.15 and _fractions(inner, MEDIASTINUM_LIKE) >= 0.25)


def _propose_lung(rng, anatomy: Anatomy):
    U = rng.uniform
    h = anatomy.fov_mm[0] / 2
    r = U(6, 16)
    side = int(rng.choice([-1, 1]))
    lung = anatomy.lung(side)
    extent = TUMOUR_EXTENT * r
    z_lo, z_hi = max(-h + extent + 2, lung.dome_z + 20), h - extent - 2
    if z_lo >= z_hi:
        return None
    cy, cx = lung.centre_yx
    ly, lx = lung.semi_axes_yx
    centre = np.array([U(z_lo, z_hi), cy + U(-0.8, 0.8) * ly, cx + U(-0.8, 0.8) * lx])
    tumour = Tumour(centre=centre, radius=r, location="lung", side=side, shape="", ct_mean_hu=U(30, 40),
                    ct_texture_sd_hu=U(3, 6), mri_mean=U(600, 720), mri_texture_sd=U(25, 40))
    _tumour_shape(rng, tumour)
    return tumour


def _lung_fits(anatomy: Anatomy, tumour: Tumour) -> bool:
    extent = TUMOUR_EXTENT * tumour.radius
    tissue, dist = _local_tissue(anatomy, tumour.centre, extent + 8)
    around = tissue[dist <= extent + 8]
    return (_fractions(around, (Tissue.LUNG, Tissue.VESSEL)) == 1.0
            and _fractions(around, (Tissue.VESSEL,)) < 0.2 and _fractions(around, (Tissue.LUNG,)) > 0.8)


def sample_anatomy(rng: np.random.Generator, fov_mm=NOMINAL_FOV_MM, max_tries: int = 400) -> Anatomy:
    """A random thorax with 1-3 tumours, at least one of them mediastinal (hard); about half of all are hard."""
    anatomy = _sample_base_anatomy(rng, fov_mm)
    n_tumours = int(rng.choice([1, 2, 3], p=[0.2, 0.5, 0.3]))
    n_hard = 2 if n_tumours == 3 and rng.random() < 0.5 else 1
    for location in ["mediastinal"] * n_hard + ["lung"] * (n_tumours - n_hard):
        propose, fits = ((_propose_mediastinal, _mediastinal_fits) if location == "mediastinal"
                         else (_propose_lung, _lung_fits))
        for _ in range(max_tries):
            tumour = propose(rng, anatomy)
            if tumour is not None and fits(anatomy, tumour):
                anatomy.tumours.append(tumour)
                break
        else:
            # Only a further tumour may be dropped; every case keeps its first (hard) one.
            if not anatomy.tumours:
                raise RuntimeError("could not place a mediastinal tumour in the phantom thorax")
    return anatomy


# ----------------------------------------------------------------------------------------------- cases and metrics
@dataclass
class PhantomVolume:
    anatomy: Anatomy
    grid: Grid
    maps: TissueMaps
    image: np.ndarray


def ct_anatomy(seed: int, index: int, fov_mm=NOMINAL_FOV_MM) -> Anatomy:
    return sample_anatomy(case_rng(seed, "ct_anatomy", index), fov_mm)


def mri_anatomy(seed: int, index: int, fov_mm=NOMINAL_FOV_MM) -> Anatomy:
    return sample_anatomy(case_rng(seed, "mri_anatomy", index), fov_mm)


def add_hard_ct_signal(anatomy: Anatomy, signal: str, rng: np.random.Generator) -> None:
    """Give the hard tumours the CT signal `signal` (HARD_CT_SIGNALS); its own random stream, so the anatomy and
    the noise stay those of the same case without it."""
    if signal not in HARD_CT_SIGNALS:
        raise UserInputError(f"hard tumour CT signal {signal!r}: expected one of {', '.join(HARD_CT_SIGNALS)}")
    for t in anatomy.tumours:
        if signal == "enhancing-atelectasis" and t.atelectasis is not None:
            t.atelectasis_enhancement_hu = float(rng.uniform(*ATELECTASIS_ENHANCEMENT_HU))
            t.atelectasis_ct_hu += t.atelectasis_enhancement_hu


def make_ct_volume(seed: int, index: int, grid: Grid, hard_ct_signal: str = HARD_CT_SIGNALS[0]) -> PhantomVolume:
    anatomy = ct_anatomy(seed, index, grid.fov_mm)
    add_hard_ct_signal(anatomy, hard_ct_signal, case_rng(seed, "ct_signal", index))
    maps = render_tissues(anatomy, grid.axes())
    return PhantomVolume(anatomy, grid, maps, render_ct(anatomy, maps, grid, case_rng(seed, "ct_noise", index)))


def make_mri_volume(seed: int, index: int, grid: Grid) -> PhantomVolume:
    anatomy = mri_anatomy(seed, index, grid.fov_mm)
    maps = render_tissues(anatomy, grid.axes())
    return PhantomVolume(anatomy, grid, maps, render_mri(anatomy, maps, grid, case_rng(seed, "mri_noise", index)))


def _mean_or_none(values: np.ndarray):
    return float(values.mean()) if values.size else None


def measure_tumours(volume: PhantomVolume, shell_mm: float = SHELL_MM) -> list:
    """Per tumour, measured on the rendered image: its mean, its contrast against the tissue within `shell_mm` of it
    (mediastinum/heart; all soft tissue that blurs a mediastinal tumour's edge; lung) and which tissues its
    face-adjacent boundary voxels are. Contrasts are tumour mean minus surrounding mean (None when absent)."""
    maps, image, spacing = volume.maps, volume.image, volume.grid.spacing
    results = []
    for k, tumour in enumerate(volume.anatomy.tumours, start=1):
        whole = maps.tumour_id == k
        found = ndimage.find_objects(whole.astype(np.uint8))
        if not found or found[0] is None:
            results.append({"voxels": 0})
            continue
        margin = [int(np.ceil(shell_mm / s)) + 1 for s in spacing]
        box = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(found[0], margin, whole.shape))
        inside, tissue = whole[box], maps.tissue[box]
        values = image[box].astype(np.float64)
        dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
        shell = (dist > 0) & (dist <= shell_mm)
        boundary = ndimage.binary_dilation(inside) & ~inside
        mean = float(values[inside].mean())

        def contrast(tissues, ring=shell):
            around = _mean_or_none(values[ring & np.isin(tissue, [int(t) for t in tissues])])
            return None if around is None else mean - around

        fractions = {Tissue(t).name.lower(): float(np.mean(tissue[boundary] == t))
                     for t in np.unique(tissue[boundary])}
        voxel = np.argwhere(whole)
        centre_voxel = np.array(volume.grid.voxel_of(tumour.centre))
        inside_voxel = voxel[np.argmin(((voxel - centre_voxel) ** 2).sum(axis=1))]
        results.append({
            "voxels": int(inside.sum()),
            "volume_ml": float(inside.sum() * np.prod(spacing) / 1000.0),
            "inside_voxel_zyx": [int(v) for v in inside_voxel],
            "mean": mean,
            "contrast_vs_mediastinum": contrast(MEDIASTINUM_LIKE),
            "contrast_vs_adjacent_soft_tissue": contrast(SOFT_TISSUE_NEIGHBOURS),
            "contrast_vs_lung": contrast((Tissue.LUNG,)),
            "contrast_vs_atelectasis": contrast((Tissue.ATELECTASIS,)),
            "boundary_fractions": fractions,
            "soft_tissue_boundary_fraction": sum(fractions.get(Tissue(t).name.lower(), 0.0)
                                                 for t in SOFT_TISSUE_NEIGHBOURS),
            "touches_atelectasis": bool(np.any(tissue[boundary] == Tissue.ATELECTASIS)),
            "touches_vessel": bool(np.any(tissue[boundary] == Tissue.VESSEL)),
        })
    return results
