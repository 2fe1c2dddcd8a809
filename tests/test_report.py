"""Tests of ``nnunet_cmedl report`` (nnunet_cmedl.evaluation.report) on a fake model folder and genuine JSONs.

The evaluation and comparison JSONs come from the real ``nnunet_cmedl evaluate`` / ``compare`` CLIs run on a few
tiny NIfTI masks; the checkpoint is a torch.save'd dict with the keys nnU-Net and nnUNetTrainerCMEDL write.
"""
import ast
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_cmedl.errors import UserInputError
from nnunet_cmedl.evaluation import report
from nnunet_cmedl.evaluation.report import write_report

REPO = Path(__file__).resolve().parents[1]
TRAINER_SOURCE = REPO / "nnunet_cmedl" / "training" / "nnUNetTrainerCMEDL.py"
STOCK_KEYS = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs")
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAAB"
                           "JRU5ErkJggg==")
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def escaped(s):
    """s as the page writes text: HTML-escaped by Jinja2's autoescaping (markupsafe)."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;").replace("'", "&#39;")


def cmedl_log_keys():
    """'cmedl_' + TRAIN_LOSS_NAMES + VAL_LOG_NAMES, read from the trainer's source (importing it takes ~15 s)."""
    names = {}
    for node in ast.parse(TRAINER_SOURCE.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("TRAIN_LOSS_NAMES", "VAL_LOG_NAMES"):
            names[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(names) == {"TRAIN_LOSS_NAMES", "VAL_LOG_NAMES"}
    return ["cmedl_" + n for n in names["TRAIN_LOSS_NAMES"] + names["VAL_LOG_NAMES"]]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))


def logging_dict(epochs=3, cmedl=True):
    """Stock values as nnU-Net logs them; the j-th CMEDL value (0-based, in cmedl_log_keys order) ends at j + 1.25."""
    log = {"train_losses": [-0.1 * i for i in range(epochs)], "val_losses": [-0.05 * i for i in range(epochs)],
           "mean_fg_dice": [0.2 * i for i in range(epochs)], "ema_fg_dice": [0.1 * i for i in range(epochs)],
           "dice_per_class_or_region": [[0.2 * i, 0.3 * i] for i in range(epochs)],
           "lrs": [0.01 * (1 - i / epochs) ** 0.9 for i in range(epochs)],
           "epoch_start_timestamps": [1.7e9 + 100 * i for i in range(epochs)],
           "epoch_end_timestamps": [1.7e9 + 100 * i + 90 for i in range(epochs)]}
    if cmedl:
        for j, k in enumerate(cmedl_log_keys()):
            log[k] = [j + 1.25 + 0.5 * (epochs - 1 - i) for i in range(epochs)]
    return log


def make_model_folder(root: Path, cmedl=True, checkpoint="checkpoint_final.pth", extras=True) -> Path:
    trainer = "nnUNetTrainerCMEDL" if cmedl else "nnUNetTrainer"
    folder = root / "Dataset990_TinyThorax" / f"{trainer}__nnUNetPlans__3d_fullres"
    fold = folder / "fold_0"
    fold.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset990_TinyThorax", "plans_name": "nnUNetPlans",
                                                    "configurations": {"3d_fullres": {"patch_size": [8, 32, 32]}}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumor": 1, "heart": 2},
                                                      "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
                                                      "numTraining": 5}))
    ckpt = {"network_weights": {"w": torch.zeros(2)}, "logging": logging_dict(3, cmedl), "trainer_name": trainer,
            "init_args": {"configuration": "3d_fullres", "fold": 0}, "current_epoch": 3}
    if cmedl:
        ckpt["cmedl_i2i_kwargs"] = {"generator_features": 32, "num_res_blocks": 6}
    torch.save(ckpt, fold / checkpoint)
    if extras:
        (fold / "progress.png").write_bytes(PNG_1PX)
        if cmedl:
            (fold / "progress_cmedl.png").write_bytes(PNG_1PX)
            (fold / "cmedl_snapshots").mkdir()
            for e in (0, 10, 2):
                (fold / "cmedl_snapshots" / f"epoch_{e:04d}.png").write_bytes(PNG_1PX)
            (fold / "debug.json").write_text(json.dumps({"lambda_cycle": "10.0", "lambda_hint": "1.0",
                                                         "num_epochs": "3", "unrelated": "x"}))
    return folder


@pytest.fixture(scope="module")
def genuine_jsons(tmp_path_factory):
    """Evaluation JSONs of two methods (one with case groups) and their comparison, from the real CLIs."""
    root = tmp_path_factory.mktemp("evaljson")
    for d in ("ref", "a", "b"):
        (root / d).mkdir()
    for i in range(4):
        ref = np.zeros((6, 12, 12), np.uint8)
        ref[2:5, 3:9, 3:9] = 1
        a = np.zeros_like(ref)
        a[2:5, 3 + i % 2:9, 3:9] = 1
        b = np.zeros_like(ref)
        b[1:5, 2:9 + i % 3, 3:9] = 1
        if i == 3:
            b[:] = 0  # empty prediction: HD95 undefined (null in the JSON)
        for d, arr in (("ref", ref), ("a", a), ("b", b)):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(img, str(root / d / f"case_{i}.nii.gz"))
    (root / "groups.json").write_text(json.dumps({"hard": ["case_0", "case_1"], "easy": ["case_2", "case_3"]}))
    for m in ("a", "b"):
        r = cli("evaluate", "-ref", root / "ref", "-pred", root / m, "-o", root / f"eval_{m}", "-q",
                "--case-groups", root / "groups.json")
        assert r.returncode == 0, r.stderr
    r = cli("compare", "--pred", f"cmedl={root / 'eval_a.json'}", f"nnunet={root / 'eval_b.json'}",
            "--case-groups", root / "groups.json", "-o", root / "cmp", "-q")
    assert r.returncode == 0, r.stderr
    panels = root / "panels"
    panels.mkdir()
    for name in ("case_1.png", "case_0.png"):
        (panels / name).write_bytes(PNG_1PX)
    (panels / "index.json").write_text(json.dumps({"case_0.png": "case 0: CT, pMRI, contours",
                                                   "case_1.png": "case 1 & <teacher>"}))
    return {"root": root, "eval_a": root / "eval_a.json", "eval_b": root / "eval_b.json", "cmp": root / "cmp.json",
            "panels": panels}


def _images(text):
    return DATA_URI.findall(text)


def _rows(text, start):
    """The table rows (their HTML after <tr>, whitespace between tags removed) that start with start, in page order."""
    rows = re.sub(r">\s+<", "><", text).split("<tr>")
    return [r[:r.index("</tr>") + len("</tr>")] for r in rows if r.startswith(start)]


def test_full_report(tmp_path, genuine_jsons):
    g = genuine_jsons
    model = make_model_folder(tmp_path)
    out = tmp_path / "out" / "report.html"
    # in-process through main(argv) (a subprocess would import torch and warm matplotlib up once more)
    assert report.main(["-m", str(model), "-f", "0", "--metrics", str(g["eval_a"]), str(g["eval_b"]),
                        "--comparison", str(g["cmp"]), "--panels", str(g["panels"]), "--title", "My <CMEDL> run & co",
                        "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")

    # self-contained: no external resource, no script
    assert 'src="http' not in text and "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', text)
    imgs = _images(text)
    assert all(base64.b64decode(d).startswith(b"\x89PNG") for d in imgs)
    # curves figure + progress.png + progress_cmedl.png + latest snapshot + 2 panels
    assert len(imgs) == 6 and text.count("<img") == 6
    assert "epoch_0010.png (the latest of 3 snapshot(s)" in text

    # header
    assert "<title>My &lt;CMEDL&gt; run &amp; co</title>" in text and "<h1>My &lt;CMEDL&gt; run &amp; co</h1>" in text
    for s in ("Dataset990_TinyThorax", "nnUNetTrainerCMEDL", "3d_fullres", "checkpoint_final.pth",
              "nnUNetPlans", str(model.resolve())):
        assert s in text, s
    assert re.search(r"<th>epochs trained</th><td>3 ", text)
    assert "lambda_cycle" in text and "unrelated" not in text  # hyperparameters from debug.json
    assert "CMEDL curves are absent" not in text

    # every logged value named, with its last value (see logging_dict) and the unrounded one as its tooltip
    for j, k in enumerate(cmedl_log_keys()):
        assert _rows(text, f"<td><code>{k}</code></td>")[0].endswith(
            f'<td class="num" title="{j + 1}.25">{j + 1}.2500</td><td class="num">{j + 1}.2500</td>'
            f'<td class="num">{j + 2}.2500</td></tr>'), k
    last = {"train_losses": 'title="-0.2">-0.2000<', "val_losses": 'title="-0.1">-0.1000<',
            "mean_fg_dice": 'title="0.4">0.4000<', "ema_fg_dice": 'title="0.2">0.2000<',
            "lrs": '">0.0037<',  # 0.01 * (1/3) ** 0.9
            "dice_per_class_or_region[1]": 'title="0.6">0.6000<'}
    for k, cell in last.items():
        assert cell in _rows(text, f"<td><code>{k}</code></td>")[0], k
    assert _rows(text, "<td><code>dice_per_class_or_region[1]</code></td>")[0].startswith(
        "<td><code>dice_per_class_or_region[1]</code></td><td>student: pseudo Dice of label 2 (heart) (val)</td>"
        '<td class="num">3</td><td class="num">3</td><td class="num" title="0.0">0.0000</td>')

    # metric tables, values worked out from the masks of genuine_jsons: the reference is a 3x6x6 box (108 voxels);
    # method a finds all of it (cases 0, 2) or 3x5x6 = 90 voxels of it (cases 1, 3: DSC 180/198 = 10/11), method b
    # covers it with 4x7x6, 4x8x6, 4x9x6 voxels (DSC 216/276, 216/300, 216/324) and predicts nothing for case_3
    dsc = {"case_0": ("1.0", "1.000", "0.782608695652174", "0.783"), "case_1": ("0.9090909090909091", "0.909",
                                                                             "0.72", "0.720"),
           "case_2": ("1.0", "1.000", "0.6666666666666666", "0.667"), "case_3": ("0.9090909090909091", "0.909",
                                                                                 "0.0", "0.000")}
    for case, (exact_a, shown_a, exact_b, shown_b) in dsc.items():
        group = "hard" if case in ("case_0", "case_1") else "easy"
        row_a, row_b = _rows(text, f"<td>{case}</td>")  # in the per-case tables of eval_a.json, then eval_b.json
        for row, exact, shown in ((row_a, exact_a, shown_a), (row_b, exact_b, shown_b)):
            assert row.startswith(f'<td>{case}</td><td>{group}</td><td>1</td><td>label_1</td>'
                                  f'<td class="num" title="{exact}">{shown}</td>'), row
    _, row_b = _rows(text, "<td>case_3</td>")  # b's empty prediction: HD95 undefined
    assert '<td class="num">nan</td><td>yes</td><td class="num">108</td><td class="num">0</td></tr>' in row_b
    assert text.count("<details><summary>Per case (4 rows)</summary>") == 2

    def untitled(row):
        return re.sub(r' title="[^"]*"', "", row)
    # per label over the 4 cases: DSC mean ± sd (n - 1) and median; b's HD95 has n 3 and n_nan 1 (case_3)
    agg_a, agg_b = map(untitled, _rows(text, "<td>1</td><td>label_1</td>"))
    assert agg_a.startswith('<td>1</td><td>label_1</td><td class="num">0.955 ± 0.052</td><td class="num">0.955</td>'
                            '<td class="num">4</td><td class="num">0</td>')
    assert agg_b.startswith('<td>1</td><td>label_1</td><td class="num">0.542 ± 0.365</td><td class="num">0.693</td>'
                            '<td class="num">4</td><td class="num">0</td>')
    assert agg_b.endswith('<td class="num">3</td><td class="num">1</td></tr>')
    # per case group (hard: case_0, case_1; easy: case_2, case_3)
    groups = {"hard": ("0.955 ± 0.064", "0.751 ± 0.044"), "easy": ("0.955 ± 0.064", "0.333 ± 0.471")}
    for group, (a, b) in groups.items():
        row_a, row_b = map(untitled, _rows(text, f"<td>{group}</td><td>1</td><td>label_1</td>"))
        assert row_a.startswith(f'<td>{group}</td><td>1</td><td>label_1</td><td class="num">{a}</td>')
        assert row_b.startswith(f'<td>{group}</td><td>1</td><td>label_1</td><td class="num">{b}</td>')

    # comparison: a beats b on the DSC of all 4 cases: exact two-sided Wilcoxon p = 2 / 2^4 = 0.125 (hard, 2 cases:
    # 2 / 2^2 = 0.5); mean difference 21/22 - 0.542 = 0.412 (hard: 0.955 - 0.751 = 0.203); not below alpha 0.001
    assert "<h3>cmedl vs nnunet</h3>" in text and "<th>p &lt; 0.001</th>" in text
    (row,) = _rows(text, "<td>all</td><td>1 label_1</td><td>DSC</td>")
    assert untitled(row).startswith('<td>all</td><td>1 label_1</td><td>DSC</td><td class="num">4</td>'
                                    '<td class="num">0</td><td class="num">0.955</td><td class="num">0.542</td>'
                                    '<td class="num">0.412</td><td class="num">0.1250</td><td>no</td><td>cmedl</td>'
                                    '<td>4 / 0 / 0</td>')
    assert 'title="0.125">0.1250<' in row
    (row,) = _rows(text, "<td>hard</td><td>1 label_1</td><td>DSC</td>")
    assert untitled(row).startswith('<td>hard</td><td>1 label_1</td><td>DSC</td><td class="num">2</td>'
                                    '<td class="num">0</td><td class="num">0.955</td><td class="num">0.751</td>'
                                    '<td class="num">0.203</td><td class="num">0.5000</td><td>no</td><td>cmedl</td>'
                                    '<td>2 / 0 / 0</td>')
    cmp = json.loads(g["cmp"].read_text())
    assert len(cmp["tests"]) == 9
    for t in cmp["tests"]:  # notes verbatim
        assert t["note"] and f"<td>{escaped(t['note'])}</td>" in text

    # panels with captions from index.json (escaped), sorted by file name
    assert "case_0.png: case 0: CT, pMRI, contours" in text
    assert "case_1.png: case 1 &amp; &lt;teacher&gt;" in text
    assert text.index("case_0.png:") < text.index("case_1.png:")

    # definitions copied from the metrics JSON, plus the comparison's
    for k, v in json.loads(g["eval_a"].read_text())["definitions"].items():
        assert f"<dt>{k}</dt><dd>{escaped(v)}</dd>" in text
    assert "<dt>wilcoxon</dt>" in text


def test_plain_nnunet_checkpoint_and_missing_optional_inputs(tmp_path):
    model = make_model_folder(tmp_path, cmedl=False, checkpoint="checkpoint_latest.pth")
    out = write_report(model, tmp_path / "plain.html", fold="0")
    text = out.read_text(encoding="utf-8")
    assert "The CMEDL curves are absent" in text and "not a CMEDL model" in text
    assert "checkpoint_latest.pth (checkpoint_final.pth is missing" in text
    assert "<code>cmedl_" not in text
    for k in STOCK_KEYS:
        assert f"<code>{k}</code>" in text
    for s in ("Metrics: not provided", "Comparison: not provided", "Case panels: not provided",
              "Definitions: not provided", "progress_cmedl.png: not present", "no snapshot PNG"):
        assert s in text, s
    assert len(_images(text)) == 2  # curves + progress.png


def test_bad_inputs(tmp_path, genuine_jsons):
    g = genuine_jsons
    # missing model folder: exit 2 and a one-line message naming it
    missing = tmp_path / "nope"
    r = cli("report", "-m", missing, "-o", tmp_path / "r.html")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(missing) in r.stderr
    assert not (tmp_path / "r.html").exists()

    model = make_model_folder(tmp_path, extras=False)
    out = tmp_path / "r.html"
    with pytest.raises(UserInputError, match="fold_1"):
        write_report(model, out, fold=1)
    with pytest.raises(UserInputError, match="--fold"):
        write_report(model, out, fold="x")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match=re.escape(str(bad))):
        write_report(model, out, metrics=[bad])
    with pytest.raises(UserInputError, match="pass it as --comparison"):
        write_report(model, out, metrics=[g["cmp"]])
    with pytest.raises(UserInputError, match="pass it as --metrics"):
        write_report(model, out, comparison=g["eval_a"])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"a": 1}))
    with pytest.raises(UserInputError, match="not a comparison JSON"):
        write_report(model, out, comparison=other)
    with pytest.raises(UserInputError, match="not an evaluation JSON"):
        write_report(model, out, metrics=[other])
    with pytest.raises(UserInputError, match="panels folder"):
        write_report(model, out, panels=tmp_path / "no_panels")
    assert not out.exists()

    # no checkpoint in the fold; an unloadable checkpoint
    (model / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(UserInputError, match="no checkpoint"):
        write_report(model, out)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="cannot load the checkpoint"):
        write_report(model, out)
    torch.save({"network_weights": {}}, model / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(UserInputError, match="no 'logging'"):
        write_report(model, out)


class Payload:
    """Stands for any Python object in a pickle: loading it runs its __reduce__, i.e. code of the file's choosing."""

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_checkpoints_load_without_running_code_unless_trusted(tmp_path):
    model = make_model_folder(tmp_path, extras=False)
    out, ran = tmp_path / "r.html", tmp_path / "the_checkpoint_ran_code"
    ckpt_file = model / "fold_0" / "checkpoint_final.pth"
    # numpy numbers and arrays (nnU-Net logs numpy floats; CMEDL saves numpy's random state) are plain data
    ckpt = torch.load(ckpt_file, weights_only=False)
    ckpt["logging"]["train_losses"] = [np.float32(x) for x in ckpt["logging"]["train_losses"]]
    ckpt["cmedl_rng_state"] = {"numpy": np.random.get_state()}
    torch.save(ckpt, ckpt_file)
    write_report(model, out)
    payload = Payload()
    payload.target = str(ran)
    ckpt["extra"] = payload
    torch.save(ckpt, ckpt_file)
    r = cli("report", "-m", model, "-o", tmp_path / "refused.html")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert str(ckpt_file) in r.stderr and "--trust-checkpoint" in r.stderr and "getattr" in r.stderr
    assert not ran.exists() and not (tmp_path / "refused.html").exists()
    write_report(model, out, overwrite=True, trust_checkpoint=True)  # the user's explicit choice
    assert ran.exists()


def test_refuses_existing_output(tmp_path):
    model = make_model_folder(tmp_path, extras=False)
    out = tmp_path / "r.html"
    out.write_text("old")
    r = cli("report", "-m", model, "-o", out)
    assert r.returncode == 2 and "--overwrite" in r.stderr and r.stderr.count("\n") == 1
    assert out.read_text() == "old"
    write_report(model, out, overwrite=True)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.html")] == []  # no temporary left behind


def test_panel_index_formats(tmp_path):
    panels = tmp_path / "p"
    (panels / "sub").mkdir(parents=True)
    for name in ("b.png", "c.png", "sub/a.png"):
        (panels / name).write_bytes(PNG_1PX)
    (panels / "broken.png").write_bytes(b"not a png")
    # the index.json of `nnunet_cmedl panels` (panels.make_case_panels): no caption, captions made of the fields
    (panels / "index.json").write_text(json.dumps({
        "model_folder": "/m", "checkpoint": "/m/fold_0/checkpoint_final.pth", "configuration": "3d_fullres",
        "ct_window": {"width": 400.0, "level": 40.0, "name": "mediastinal"},
        "slice_rule": "argmax over axis 0 of the reference foreground area (middle slice if empty)",
        "contours": {"reference": "green", "student": "red", "teacher": "blue"},
        "panels": [{"case": "b", "png": "b.png", "slice": 7, "axis": 0, "num_slices": 16, "reference_area_voxels": 30,
                    "reference_empty": False, "student_source": "computed", "student_file": None,
                    "dice_student": 0.8125, "dice_teacher": None, "mri_file": "/x/mri_3.nii.gz", "mri_slice": 5,
                    "image_files": ["/ct/b_0000.nii.gz"]},
                   {"case": "c", "png": "c.png", "slice": 4, "axis": 0, "num_slices": 9, "reference_area_voxels": 0,
                    "reference_empty": True, "student_source": "--student-pred", "student_file": "/pred/c.nii.gz",
                    "dice_student": 1.0, "dice_teacher": 0.5, "mri_file": None, "mri_slice": None,
                    "image_files": ["/ct/c_0000.nii.gz"]}]}))
    p = report.load_panels(panels)
    assert [(i["name"], i["caption"]) for i in p["items"]] == [
        ("b.png", "case b; slice 7 of 16 (axis 0); Dice student 0.812, teacher nan; student segmentation: computed; "
                  "MRI mri_3.nii.gz slice 5"),
        ("c.png", "case c; slice 4 of 9 (axis 0); empty reference; Dice student 1.000, teacher 0.500; student "
                  "segmentation: --student-pred"),
        ("sub/a.png", None)]
    assert p["skipped"] == ["broken.png"] and p["note"] is None and p["index"] == "index.json"
    assert p["description"] == ("contours: reference green, student red, teacher blue; CT window mediastinal "
                                "(width 400.0, level 40.0); slice: argmax over axis 0 of the reference foreground "
                                "area (middle slice if empty)")
    # a plain {file: caption}, file relative to the folder
    (panels / "index.json").write_text(json.dumps({"b.png": "bee", "sub/a.png": "ay"}))
    p = report.load_panels(panels)
    assert [(i["name"], i["caption"]) for i in p["items"]] == [("b.png", "bee"), ("c.png", None), ("sub/a.png", "ay")]
    assert p["note"] is None and p["description"] is None
    # anything else gives no caption, and a note saying so
    for other in ([{"file": "b.png", "caption": "bee"}], {"images": [{"file": "b.png", "caption": "bee"}]}):
        (panels / "index.json").write_text(json.dumps(other))
        p = report.load_panels(panels)
        assert [i["caption"] for i in p["items"]] == [None, None, None]
        assert p["note"].startswith("index.json: no captions found in it")
    (panels / "index.json").write_text("{")
    with pytest.raises(UserInputError, match="index.json"):
        report.load_panels(panels)
