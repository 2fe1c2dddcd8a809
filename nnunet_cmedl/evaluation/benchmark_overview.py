"""``nnunet_cmedl benchmark-overview``: many benchmark results in one forest plot, each method's gain over the
baseline of its own benchmark, with its interval over seeds.

The benchmarks are listed in a tab-separated file, one line per method to show:

    # comment lines and empty lines are skipped; a line "## heading" starts a group
    LABEL <TAB> SUMMARY <TAB> METHOD

SUMMARY is a ``benchmark_summary.json`` (or the folder that holds it) of ``nnunet_cmedl benchmark`` or
``benchmark-merge``, relative to the list's folder; METHOD one of its methods other than its baseline.

For each line and each tumour group (hard, easy, all), the unit is the training run: the per-tumour DSC of the final
checkpoint, averaged over the test tumours of that seed, minus the baseline's at the same seed (the seeds both
have). Shown: the mean difference, its 95% interval (Student's t over those seeds), how many seeds are better, and
the paired t-test's p, the same numbers as the benchmark's own test "paired by seed" (``runs_paired``). Tests over
tumours are not repeated here: each benchmark's own table has them.

Written to --output: ``benchmark_overview.png`` (the forest plot) and ``benchmark_overview.md`` (the table).
"""
import argparse
import math
from pathlib import Path

from scipy import stats as scipy_stats

from mri_unpaired.atomic import atomic_file
from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation.benchmark_merge import load_summary
from nnunet_cmedl.evaluation.benchmark_report import DIFFICULTIES
from nnunet_cmedl.evaluation.statistics import paired_t_test
from nnunet_cmedl.evaluation.tables import refuse_existing_outputs

OUTPUTS = ("benchmark_overview.png", "benchmark_overview.md")


def read_list(path: Path) -> list:
    """[(group, label, summary path, method)] of a list file; a malformed line is an error naming it."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UserInputError(f"{path}: cannot read it ({e.strerror or e})") from None
    entries, group = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("##"):
            group = line.lstrip("#").strip()
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 3 or not all(fields):
            raise UserInputError(f"{path}:{number}: expected LABEL<TAB>SUMMARY<TAB>METHOD, got {line.strip()!r}")
        label, summary, method = fields
        summary = path.parent / summary
        entries.append((group, label, summary / "benchmark_summary.json" if summary.is_dir() else summary, method))
    if not entries:
        raise UserInputError(f"{path}: lists no benchmark (LABEL<TAB>SUMMARY<TAB>METHOD per line)")
    return entries


def difference(summary: dict, method: str, difficulty: str) -> dict:
    """The run-level paired comparison of ``method`` with the summary's baseline (per-tumour DSC, final checkpoint),
    with the 95% t interval of the mean difference."""
    entry = summary["tumours"][difficulty]["dsc"]
    own, base = (dict(zip(entry[m]["seeds"], entry[m]["per_seed"])) for m in (method, summary["baseline"]))
    seeds = sorted(set(own) & set(base))
    test = paired_t_test([own[s] for s in seeds], [base[s] for s in seeds])
    n, sd = test["n"], test["sd_difference"]
    half = scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 and math.isfinite(sd) else float("nan")
    return {**test, "seeds": seeds, "low": test["mean_difference"] - half, "high": test["mean_difference"] + half}


def overview(list_path: Path) -> list:
    """One row per listed method: its group, label, summary, method, baseline, and per tumour group the paired
    comparison (``difference``)."""
    rows, loaded = [], {}
    for group, label, path, method in read_list(list_path):
        if path not in loaded:
            loaded[path] = load_summary(path)
        summary = loaded[path]
        methods = summary["tumours"]["all"]["dsc"]
        if method not in methods or method == summary["baseline"]:
            others = ", ".join(m for m in methods if m != summary["baseline"])
            raise UserInputError(f"{path}: has no method {method!r} to compare with its baseline "
                                 f"{summary['baseline']!r} (it has: {others}); listed in {list_path}")
        if not summary["tumours"]["all"]["dsc"][method].get("seeds"):
            raise UserInputError(f"{path}: keeps no seeds per run (written before stop 20); cannot pair {method} "
                                 f"with {summary['baseline']} by seed")
        rows.append({"group": group, "label": label, "summary": str(path), "method": method,
                     "baseline": summary["baseline"], "budget": summary["budget"],
                     **{d: difference(summary, method, d) for d in DIFFICULTIES}})
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def table(rows: list, command: str) -> str:
    lines = ["# Benchmark overview: each method against the baseline of its own benchmark", "",
             f"Command: `{command}`", "",
             "Per-tumour DSC of the final checkpoint, mean over the test tumours per run, method minus baseline at "
             "the same seed; mean over seeds [95% t interval], seeds better / seeds, paired t-test p.", "",
             "| group | label | method | against (budget) | " + " | ".join(DIFFICULTIES) + " | summary |",
             "|---|---|---|---|" + "---|" * len(DIFFICULTIES) + "---|"]
    for r in rows:
        cells = [f"{_fmt(r[d]['mean_difference'])} [{_fmt(r[d]['low'])}, {_fmt(r[d]['high'])}], "
                 f"{r[d]['n_better']}/{r[d]['n']}, p {_p(r[d]['p_value'])}" for d in DIFFICULTIES]
        lines.append(f"| {r['group']} | {r['label']} | {r['method']} | {r['baseline']} ({r['budget']}) | "
                     + " | ".join(cells) + f" | {r['summary']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, filename: Path) -> None:
    """Forest plot, one panel per tumour group, on one x scale; an interval reaching past the scale is cut there and
    ends in an arrow."""
    from nnunet_cmedl.plotting import colours, default_style, save_figure, subplots
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colour = {g: colours()[i % len(colours())] for i, g in enumerate(groups)}
    means = [abs(r[d]["mean_difference"]) for r in rows for d in DIFFICULTIES if math.isfinite(r[d]["mean_difference"])]
    limit = max([0.3] + [m + 0.05 for m in means])
    y = list(range(len(rows)))[::-1]
    height = 2.4 + 0.32 * len(rows)
    with default_style():
        fig, axes = subplots(1, len(DIFFICULTIES), figsize=(4 + 3 * len(DIFFICULTIES), height), sharey=True,
                             squeeze=False)
        for ax, difficulty in zip(axes[0], DIFFICULTIES):
            ax.axvline(0.0, color="0.3", lw=1)
            for yi, r in zip(y, rows):
                d, c = r[difficulty], colour[r["group"]]
                low, high = (max(-limit, d["low"]), min(limit, d["high"])) if math.isfinite(d["low"]) else (None,) * 2
                if low is not None:
                    ax.plot([low, high], [yi, yi], color=c, lw=1.5)
                    for end, cut, marker in ((low, d["low"] < -limit, "<"), (high, d["high"] > limit, ">")):
                        ax.plot([end], [yi], marker=marker if cut else "|", color=c, ms=6)
                ax.plot([d["mean_difference"]], [yi], "o", color=c, ms=5)
                ax.annotate(f"{d['n_better']}/{d['n']}", (1.0, yi), xycoords=("axes fraction", "data"),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7, color="0.3")
            ax.set_xlim(-limit, limit)
            ax.set_title(f"{difficulty} tumours")
            ax.set_xlabel("Δ DSC vs baseline")
            ax.grid(axis="x", alpha=0.3)
        axes[0][0].set_yticks(y)
        axes[0][0].set_yticklabels([f"{r['label']}  (n={r['all']['n']})" for r in rows], fontsize=8)
        for tick, r in zip(axes[0][0].get_yticklabels(), rows):
            tick.set_color(colour[r["group"]])
        handles = [axes[0][0].plot([], [], "o", color=colour[g])[0] for g in groups]
        fig.legend(handles, [g or "methods" for g in groups], loc="lower center", ncol=min(len(groups), 3),
                   fontsize=8, frameon=False)
        fig.suptitle("Per-tumour DSC, final checkpoint: method minus the baseline of its benchmark, paired by seed "
                     "(mean over seeds, 95% t interval; k/n: seeds better)", fontsize=9)
        fig.tight_layout(rect=(0, 0.8 / height, 1, 1))
        save_figure(fig, filename, dpi=90)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_cmedl benchmark-overview", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("list", help="tab-separated list: LABEL<TAB>SUMMARY<TAB>METHOD per line ('## group' headings)")
    p.add_argument("-o", "--output", required=True, help="folder for benchmark_overview.png and .md (created)")
    p.add_argument("--overwrite", action="store_true", help="replace an overview already in --output")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    output = Path(a.output)
    refuse_existing_outputs([output / f for f in OUTPUTS], a.overwrite)
    rows = overview(Path(a.list))
    output.mkdir(parents=True, exist_ok=True)
    plot(rows, output / OUTPUTS[0])
    with atomic_file(output / OUTPUTS[1]) as f:
        f.write(table(rows, f"nnunet_cmedl benchmark-overview {a.list} -o {a.output}"))
    print(f"{len(rows)} methods: {output / OUTPUTS[0]}, {output / OUTPUTS[1]}")
    return 0
