"""Paired tests between methods, shared by ``nnunet_cmedl compare``, the per-tumour analysis and the benchmark."""
import warnings
from typing import Sequence

import numpy as np
from scipy import stats

DEFAULT_ALPHA = 0.001  # the CMEDL paper's significance level
MIN_N_FOR_TEST = 6


def paired_wilcoxon(a: Sequence[float], b: Sequence[float], alpha: float = DEFAULT_ALPHA) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values (NaN pairs must be removed before)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = a - b
    n = int(d.size)
    n_nonzero = int(np.count_nonzero(d))
    out = {"n_nonzero": n_nonzero, "wilcoxon_statistic": float("nan"), "p_value": float("nan"),
           "min_possible_p": float("nan"), "note": ""}
    if n == 0:
        out["note"] = "no test: no case with the value defined for both methods"
        return out
    if n_nonzero == 0:
        out["note"] = "no test: every paired difference is zero (identical values)"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method="auto")
    out["wilcoxon_statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    min_p = min(1.0, 2.0 / 2.0 ** n_nonzero)
    out["min_possible_p"] = min_p
    notes = []
    if n_nonzero < MIN_N_FOR_TEST:
        notes.append(f"only {n_nonzero} non-zero difference(s) (< {MIN_N_FOR_TEST}): scipy's p-value reported as is; "
                     f"the two-sided p cannot be below {min_p:.3g}")
    elif min_p >= alpha:
        notes.append(f"{n_nonzero} non-zero differences: the two-sided p cannot be below {min_p:.3g}, so not below "
                     f"alpha={alpha:g}")
    if n_nonzero < n:
        notes.append(f"{n - n_nonzero} zero difference(s) dropped")
    out["note"] = "; ".join(notes)
    return out
