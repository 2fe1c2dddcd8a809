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


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided Welch t-test of two independent samples, e.g. one value per training run (seed) of two methods:
    the test whose unit is the run, so that run-to-run variation counts (tests over tumours treat a run as fixed)."""
    a = np.asarray([x for x in a if np.isfinite(x)], dtype=np.float64)
    b = np.asarray([x for x in b if np.isfinite(x)], dtype=np.float64)
    out = {"n_a": int(a.size), "n_b": int(b.size), "mean_difference": float("nan"), "p_value": float("nan"),
           "note": ""}
    if a.size < 2 or b.size < 2:
        out["note"] = "no test: fewer than 2 runs on one side"
        return out
    out["mean_difference"] = float(a.mean() - b.mean())
    if a.std() == 0 and b.std() == 0:
        out["note"] = "no test: no variation between runs"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["p_value"] = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return out


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided paired t-test (a one-sample t-test of the differences a - b), e.g. one value per seed of two methods
    trained with the same seeds: the runs of one seed are matched pairs (on the CPU they share the student's initial
    weights and batches until the methods differ), and the differences of different seeds are independent whatever
    the pair shares, so the training run stays the unit. Also the Wilcoxon signed-rank p of the same differences."""
    pairs = [(x, y) for x, y in zip(a, b) if np.isfinite(x) and np.isfinite(y)]
    d = np.asarray([x - y for x, y in pairs], dtype=np.float64)
    out = {"n": int(d.size), "mean_difference": float(d.mean()) if d.size else float("nan"),
           "sd_difference": float(d.std(ddof=1)) if d.size > 1 else float("nan"), "n_better": int((d > 0).sum()),
           "p_value": float("nan"), "wilcoxon_p": float("nan"), "note": ""}
    if d.size < 2:
        out["note"] = "no test: fewer than 2 matched pairs"
        return out
    if np.ptp(d) <= 1e-12:  # up to rounding
        out["note"] = "no test: every pair differs by the same amount"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["p_value"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    out["wilcoxon_p"] = paired_wilcoxon(d, np.zeros_like(d))["p_value"]
    return out
