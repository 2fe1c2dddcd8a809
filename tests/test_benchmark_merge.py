"""``nnunet_cmedl benchmark-merge``: summaries of different seeds give the statistics one benchmark of all the seeds
would give (what a user checks before trusting a merged table)."""
import json

import numpy as np
import pytest

from nnunet_cmedl import cli
from nnunet_cmedl.evaluation import benchmark_report

METHODS = ("nnU-Net", "CMEDL_x")
EPOCHS = (10, 20, 40)


def fake_results(seeds) -> dict:
    """Evaluated runs as ``benchmark_report.evaluate`` collects them: 8 cases with a hard and an easy tumour each;
    CMEDL_x is better on the hard tumours by a seed-dependent amount; every value depends only on (method, seed,
    case, tumour, epoch), so a seed's run is the same whichever benchmark it was in."""
    results = {}
    for m, method in enumerate(METHODS):
        results[method] = {}
        for seed in seeds:
            def rows(epoch):
                rng = np.random.default_rng([m, seed, epoch])
                tumours, cases = [], []
                for c in range(8):
                    for t, difficulty in enumerate(("hard", "easy")):
                        dsc = float(np.clip(rng.uniform(0.1, 0.7) + (0.05 + 0.02 * seed) * m * (t == 0) * epoch / 40,
                                            0, 1))
                        tumours.append({"case": f"c{c}", "tumour": t, "difficulty": difficulty, "dsc": dsc,
                                        "sdsc": dsc + 0.05, "hd95": 20 - 10 * dsc, "recall": dsc})
                    cases.append({"case": f"c{c}", "dsc": float(rng.uniform(0.2, 0.8)),
                                  "sdsc": float(rng.uniform(0.2, 0.8)), "hd95": float(rng.uniform(5, 30))})
                return {"cases": cases, "tumours": tumours}
            entry = {"curve": {e: rows(e) for e in EPOCHS},
                     "minutes_at_epoch": {e: e * (0.5 + m) for e in range(1, 41)},
                     "measured_minutes": 21.0 + m + seed, "fastest_epoch_seconds": 30.0 + 60 * m,
                     "log": {"mean_fg_dice": [0.1 * seed, 0.2], "ema_fg_dice": [0.1, 0.2],
                             "cmedl_teacher_pseudo_dice_pmri": [0.3, 0.4] if m else None,
                             "train_losses": [1.0, 0.5], "val_losses": [1.0, 0.6]}}
            entry["final"] = entry["curve"][40]
            if m:
                entry["teacher_final"] = rows(41)
                entry["pmri_contrast"] = {d: {"pMRI": 0.6 + 0.01 * seed, "CT": 0.7} for d in ("hard", "easy", "all")}
            results[method][seed] = entry
    return results


def summary_file(path, seeds, budget="cpu"):
    header = {"budget": budget, "configuration": "2d_bench", "dataset": "Dataset502_CMEDLThorax", "device": "cpu",
              "command": f"nnunet_cmedl benchmark --seeds {' '.join(map(str, seeds))}", "baseline": METHODS[0],
              "iterations_per_epoch": 30, "runs": [{"method": m, "seed": s, "fold": 0, "trainer": f"{m}_{s}",
                                                    "folder": "f"} for m in METHODS for s in seeds],
              "train_seconds_this_invocation": {}}
    summary = benchmark_report.summarise(fake_results(seeds), header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, default=float))
    return json.loads(path.read_text())


def merge(tmp_path, *inputs, out="merged", check=0, capsys=None):
    rc = cli.main(["benchmark-merge", *map(str, inputs), "-o", str(tmp_path / out)])
    assert rc == check
    if rc:
        return capsys.readouterr().err
    return json.loads((tmp_path / out / "benchmark_summary.json").read_text())


def _hard(summary, method="CMEDL_x"):
    return summary["tumours"]["hard"]["dsc"][method]


def test_merged_summaries_give_the_statistics_of_one_benchmark_of_all_seeds(tmp_path, capsys):
    full = summary_file(tmp_path / "full" / "benchmark_summary.json", [3, 4, 5, 6, 7, 8])
    a = summary_file(tmp_path / "a" / "benchmark_summary.json", [3, 4, 5])
    summary_file(tmp_path / "b" / "benchmark_summary.json", [5, 6, 7, 8])  # seed 5 in both: the same runs
    merged = merge(tmp_path, tmp_path / "a" / "benchmark_summary.json", tmp_path / "b")
    assert _hard(merged)["seeds"] == [3, 4, 5, 6, 7, 8]
    for difficulty in ("hard", "easy", "all"):
        for metric in ("dsc", "sdsc", "hd95", "recall"):
            for method in METHODS:
                got, want = (s["tumours"][difficulty][metric][method] for s in (merged, full))
                assert got["per_seed"] == pytest.approx(want["per_seed"]) and got["n_units"] == want["n_units"]
    got, want = _hard(merged)["vs_baseline"], _hard(full)["vs_baseline"]
    for how in ("seed_averaged", "pooled", "runs", "runs_paired"):
        assert got[how]["p_value"] == pytest.approx(want[how]["p_value"])
        assert got[how]["mean_difference"] == pytest.approx(want[how]["mean_difference"])
    assert got["runs_paired"]["n"] == 6 and got["seed_averaged"]["n"] == 8
    assert _hard(merged)["mean"] > _hard(merged, METHODS[0])["mean"]  # the effect the fake data carries
    assert merged["cases"]["dsc"]["CMEDL_x"]["vs_baseline"]["pooled"]["p_value"] == \
        pytest.approx(full["cases"]["dsc"]["CMEDL_x"]["vs_baseline"]["pooled"]["p_value"])
    assert merged["curves"] == full["curves"]
    assert merged["teacher_on_pmri"] == full["teacher_on_pmri"]
    assert merged["validation"] == full["validation"]
    # minutes per run: each summary's mean, weighted by the seeds taken from it (seed 5 is a's)
    b = json.loads((tmp_path / "b" / "benchmark_summary.json").read_text())
    assert merged["measured_minutes_per_run"] == pytest.approx(
        {m: (3 * a["measured_minutes_per_run"][m] + 3 * b["measured_minutes_per_run"][m]) / 6 for m in METHODS})
    assert len(merged["runs"]) == 12
    for name in ("learning_curves_iterations", "learning_curves_minutes", "teacher_vs_student"):
        assert (tmp_path / "merged" / f"{name}.png").stat().st_size > 5000
    md = (tmp_path / "merged" / "benchmark_summary.md").read_text()
    assert "seed 8" in md and "benchmark-merge" in md
    # a merged summary merges again
    summary_file(tmp_path / "c" / "benchmark_summary.json", [9])
    again = merge(tmp_path, tmp_path / "merged", tmp_path / "c", out="again")
    assert _hard(again)["seeds"] == [3, 4, 5, 6, 7, 8, 9]
    assert a["final_rows"]["CMEDL_x"]["3"] == again["final_rows"]["CMEDL_x"]["3"]


def test_summaries_with_other_curve_epochs_merge_at_the_epochs_all_have(tmp_path):
    """Stop 34: CMEDL_x's runs of one summary had checkpoints at fewer epochs than the other summary's methods; the
    merge failed with a traceback writing its table of curves. Every method now has the epochs all summaries share."""
    summary_file(tmp_path / "a" / "benchmark_summary.json", [3, 4])
    b = summary_file(tmp_path / "b" / "benchmark_summary.json", [5, 6])
    for curve in b["curves"]["CMEDL_x"].values():  # as if run with --curve-epochs 20: no checkpoint at epoch 10
        i = curve["epochs"].index(10)
        for key in [k for k, v in curve.items() if isinstance(v, list) and len(v) == len(EPOCHS)]:
            del curve[key][i]
    (tmp_path / "b" / "benchmark_summary.json").write_text(json.dumps(b))
    merged = merge(tmp_path, tmp_path / "a", tmp_path / "b")
    assert {m: c["hard"]["epochs"] for m, c in merged["curves"].items()} == {m: [20, 40] for m in METHODS}
    assert all(len(seeds) == 4 for c in merged["curves"].values() for seeds in c["hard"]["dsc"])
    assert "Learning curves" in (tmp_path / "merged" / "benchmark_summary.md").read_text()


def test_the_tumour_aucs_of_the_pmri_merge_where_every_summary_has_them(tmp_path):
    summary_file(tmp_path / "a" / "benchmark_summary.json", [3, 4])
    b = summary_file(tmp_path / "b" / "benchmark_summary.json", [5, 6])
    merged = merge(tmp_path, tmp_path / "a", tmp_path / "b")
    assert merged["teacher_on_pmri"]["CMEDL_x"]["hard"]["pMRI tumour AUC"] == pytest.approx([0.63, 0.64, 0.65, 0.66])
    assert "tumour AUC in pMRI (CT)" in (tmp_path / "merged" / "benchmark_summary.md").read_text()
    for difficulty in ("hard", "easy", "all"):  # b as written before stop 35: no AUCs
        for key in ("pMRI tumour AUC", "CT tumour AUC"):
            del b["teacher_on_pmri"]["CMEDL_x"][difficulty][key]
    (tmp_path / "b" / "benchmark_summary.json").write_text(json.dumps(b))
    older = merge(tmp_path, tmp_path / "a", tmp_path / "b", out="older")
    teacher = older["teacher_on_pmri"]["CMEDL_x"]
    assert teacher["seeds"] == [3, 4, 5, 6] and len(teacher["hard"]["teacher"]) == 4
    assert "pMRI tumour AUC" not in teacher["hard"]


def test_older_summaries_merge_with_the_tests_over_runs_only(tmp_path):
    full = summary_file(tmp_path / "full.json", [3, 4, 5, 6])
    for name, seeds in (("a", [3, 4]), ("b", [5, 6])):
        old = summary_file(tmp_path / f"{name}.json", seeds)
        del old["final_rows"]  # as written before stop 31
        (tmp_path / f"{name}.json").write_text(json.dumps(old))
    merged = merge(tmp_path, tmp_path / "a.json", tmp_path / "b.json")
    assert _hard(merged)["per_seed"] == pytest.approx(_hard(full)["per_seed"])
    assert _hard(merged)["n_units"] == _hard(full)["n_units"] == 8
    got, want = _hard(merged)["vs_baseline"], _hard(full)["vs_baseline"]
    for how in ("runs", "runs_paired"):
        assert got[how]["p_value"] == pytest.approx(want[how]["p_value"])
    assert "seed_averaged" not in got and "pooled" not in got and "final_rows" not in merged
    assert merged["measured_minutes_per_run"] == pytest.approx(full["measured_minutes_per_run"])  # no seed shared
    assert "only the tests over runs" in (tmp_path / "merged" / "benchmark_summary.md").read_text()


def test_merge_refuses_what_is_not_one_benchmark_setting(tmp_path, capsys):
    summary_file(tmp_path / "a.json", [3, 4])
    b = summary_file(tmp_path / "b.json", [4, 5])
    b["tumours"]["hard"]["dsc"]["CMEDL_x"]["per_seed"][0] += 0.1  # seed 4: another run than a's
    (tmp_path / "b.json").write_text(json.dumps(b))
    err = merge(tmp_path, tmp_path / "a.json", tmp_path / "b.json", check=2, capsys=capsys)
    assert "b.json: CMEDL_x seed 4 has other results" in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists()
    summary_file(tmp_path / "gpu.json", [6], budget="gpu")
    err = merge(tmp_path, tmp_path / "a.json", tmp_path / "gpu.json", check=2, capsys=capsys)
    assert "gpu.json: budget is 'gpu'" in err
    (tmp_path / "x.json").write_text('{"budget": "cpu"}')
    err = merge(tmp_path, tmp_path / "a.json", tmp_path / "x.json", check=2, capsys=capsys)
    assert "x.json: not a benchmark_summary.json" in err
    err = merge(tmp_path, tmp_path / "a.json", tmp_path / "missing.json", check=2, capsys=capsys)
    assert "missing.json: cannot read it" in err
    # an existing merged summary is not replaced without --overwrite
    summary_file(tmp_path / "c.json", [5])
    merge(tmp_path, tmp_path / "a.json", tmp_path / "c.json")
    before = (tmp_path / "merged" / "benchmark_summary.json").read_bytes()
    err = merge(tmp_path, tmp_path / "a.json", tmp_path / "c.json", check=2, capsys=capsys)
    assert "exists" in err and (tmp_path / "merged" / "benchmark_summary.json").read_bytes() == before
