"""Writers shared by ``nnunet_cmedl evaluate`` and ``nnunet_cmedl compare``: CSV, JSON and plain-text tables.

* Every file is written atomically (``mri_unpaired.atomic.atomic_file``): a crash never leaves a half-written
  output under its final name.
* NaN / inf floats are written as ``null`` in JSON (so the files are strict JSON that any reader accepts) and as
  ``nan`` / ``inf`` in CSV (what ``float()``, pandas and R read back as NaN / inf).
"""
import csv
import json
import math
import os
from typing import Iterable, List, Sequence

import numpy as np

from nnunet_cmedl.errors import UserInputError
from mri_unpaired.atomic import atomic_file, refuse_existing


def to_jsonable(obj):
    """Deep copy of ``obj`` with numpy scalars/arrays turned into Python values and non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def nan_if_none(x) -> float:
    """Inverse of the JSON convention: ``None`` (JSON null) -> NaN, numbers -> float."""
    return float("nan") if x is None else float(x)


def refuse_existing_outputs(paths: Iterable, overwrite: bool) -> None:
    """Fail before any work is done if an output exists and ``overwrite`` is False."""
    for p in paths:
        refuse_existing(p, overwrite)


def write_json(path, obj, overwrite: bool = False) -> None:
    with atomic_file(path, overwrite=overwrite) as f:
        json.dump(to_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def read_json(path, what: str = "JSON file"):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserInputError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError(f"{path}: not a valid {what} ({e})") from None
    except OSError as e:
        raise UserInputError(f"{path}: cannot read {what} ({e.strerror})") from None


def csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    return str(v)


def write_csv(path, columns: Sequence[str], rows: Iterable[dict], overwrite: bool = False) -> None:
    """One line per dict in ``rows``; ``columns`` fixes the order (missing keys -> empty cell)."""
    with atomic_file(path, overwrite=overwrite) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_cell(r.get(c)) for c in columns])


def fmt(x, digits: int = 3) -> str:
    """Short human-readable number for terminal tables."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    f = float(x)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f != 0 and abs(f) < 10 ** -digits:
        return f"{f:.1e}"
    return f"{f:.{digits}f}"


def fmt_mean_sd(mean, sd, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "nan"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence], title: str = "") -> str:
    """Left-aligned text table with a header rule; cells are converted with ``str``."""
    cells: List[List[str]] = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def strip_output_prefix(prefix) -> str:
    """OUT_PREFIX given with a .csv/.json ending is taken without it."""
    prefix = str(prefix)
    for ending in (".json", ".csv"):
        if prefix.endswith(ending):
            prefix = prefix[: -len(ending)]
    return prefix
