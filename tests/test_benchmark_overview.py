"""``nnunet_cmedl benchmark-overview``: the forest plot of many benchmarks shows each benchmark's own paired-by-seed
numbers, with intervals that agree with its tests (what a reader of docs/benchmark/overview checks)."""
import math
from pathlib import Path

import pytest

from nnunet_cmedl import cli
from nnunet_cmedl.evaluation import benchmark_overview
from nnunet_cmedl.evaluation.benchmark_merge import load_summary
from nnunet_cmedl.evaluation.benchmark_report import DIFFICULTIES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmark"
MERGED = DOCS / "stop31" / "seeds3-9_merged"


def write_list(tmp_path, *lines) -> Path:
    path = tmp_path / "list.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_are_the_benchmarks_own_paired_tests_and_the_intervals_agree_with_them(tmp_path):
    listed = write_list(tmp_path, "# two methods of one merged benchmark", "## two-step",
                        f"two-step\t{MERGED}\tCMEDL_warmTumourAfterOnset", "## control",
                        f"control\t{MERGED}\tCMEDL_ctTeacherSameRunTumourAfterOnset")
    rows = benchmark_overview.overview(listed)
    summary = load_summary(MERGED / "benchmark_summary.json")
    assert [(r["group"], r["label"]) for r in rows] == [("two-step", "two-step"), ("control", "control")]
    for r in rows:
        for d in DIFFICULTIES:
            own = summary["tumours"][d]["dsc"][r["method"]]["vs_baseline"]["runs_paired"]
            assert r[d]["n"] == own["n"] == 7 and r[d]["n_better"] == own["n_better"]
            assert r[d]["mean_difference"] == pytest.approx(own["mean_difference"], abs=1e-12)
            assert r[d]["p_value"] == pytest.approx(own["p_value"], rel=1e-9)
            assert r[d]["low"] < r[d]["mean_difference"] < r[d]["high"]
    # stop 31's headline: over all tumours the two-step student is ahead, 6 of 7 seeds, p 0.017
    assert rows[0]["all"]["n_better"] == 6 and rows[0]["all"]["p_value"] == pytest.approx(0.017, abs=5e-4)


def test_every_committed_row_has_an_interval_that_excludes_zero_exactly_when_p_is_below_005():
    rows = benchmark_overview.overview(DOCS / "overview.tsv")
    assert len(rows) >= 20
    checked = 0
    for r in rows:
        for d in DIFFICULTIES:
            t = r[d]
            if not math.isfinite(t["p_value"]):  # e.g. the no-hint ablation: plain nnU-Net bit for bit
                assert t["mean_difference"] == 0.0 and t["note"]
                continue
            assert (t["low"] > 0 or t["high"] < 0) == (t["p_value"] < 0.05), (r["label"], d, t)
            checked += 1
    assert checked >= 60


def test_cli_writes_the_plot_and_table_and_keeps_them_without_overwrite(tmp_path, capsys):
    listed = write_list(tmp_path, f"two-step\t{MERGED}\tCMEDL_warmTumourAfterOnset")
    out = tmp_path / "out"
    assert cli.main(["benchmark-overview", str(listed), "-o", str(out)]) == 0
    png, md = (out / name for name in benchmark_overview.OUTPUTS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = md.read_text()
    assert "| two-step | CMEDL_warmTumourAfterOnset | nnU-Net (cpu) | +0.078 [" in table and "6/7, p 0.017" in table
    before = md.read_text(), png.read_bytes()
    assert cli.main(["benchmark-overview", str(listed), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and "--overwrite" in err
    assert (md.read_text(), png.read_bytes()) == before
    assert cli.main(["benchmark-overview", str(listed), "-o", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("line, expected", [
    ("only a label", "list.tsv:2: expected LABEL<TAB>SUMMARY<TAB>METHOD"),
    (f"x\t{MERGED}\tCMEDL_nope", "has no method 'CMEDL_nope'"),
    (f"x\t{MERGED}\tnnU-Net", "has no method 'nnU-Net' to compare with its baseline"),
    ("x\tno/such/summary.json\tCMEDL", "no/such/summary.json: cannot read it"),
])
def test_a_bad_list_is_one_line_naming_the_line_or_file_and_writes_nothing(tmp_path, capsys, line, expected):
    listed = write_list(tmp_path, "## group", line)
    out = tmp_path / "out"
    assert cli.main(["benchmark-overview", str(listed), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
