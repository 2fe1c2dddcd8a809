"""``nnunet_cmedl demo``: the whole CMEDL job on the embedded synthetic dataset, through nnU-Net's stock commands.

  1. generate the synthetic thorax CT dataset + unpaired MRI of other phantom patients  (nnunet_cmedl make-synthetic)
  2. plan and preprocess                                                     (nnUNetv2_plan_and_preprocess)
  3. add a small-patch configuration that inherits from the planned one     (nnunet_cmedl add-small-config)
  4. preprocess the unpaired MRI onto that configuration's geometry         (nnunet_cmedl preprocess-mri)
  5. train CMEDL (a short variant)                                          (nnUNetv2_train ... -tr nnUNetTrainerCMEDL_*)
  6. predict the test images with the student only                          (nnUNetv2_predict ... -tr nnUNetTrainerCMEDL_*)
  7. Dice, surface Dice and HD95 per test case, and where the figures are    (nnunet_cmedl evaluate)

Everything lives under --workdir (default ./demo_output) unless nnUNet_raw / nnUNet_preprocessed / nnUNet_results are
set. A step whose output exists is reused if it was made with the same settings (the dataset's options; the trained
run's trainer, configuration and epochs), so a second run goes straight to what is missing; an output made otherwise
stops the demo with a message instead of being reused.
"""
import argparse
import time
from pathlib import Path

from nnunet_cmedl import pipeline


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nnunet_cmedl demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("demo_output"), help="where everything goes (./demo_output)")
    p.add_argument("-d", "--dataset-id", type=int, default=501)
    p.add_argument("--dim", choices=sorted(pipeline.SMALL_CONFIGURATIONS), default="2d",
                   help="2d (default, fast on a CPU), 3d (small 3d patch) or 3d_fullres (nnU-Net's planned patch)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerCMEDL_cpuBudget",
                   help="CMEDL trainer variant (default nnUNetTrainerCMEDL_cpuBudget, see README for its budget)")
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--num-mri", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    a = p.parse_args(argv)

    t_start = time.time()
    device = pipeline.resolve_device(a.device)
    workdir = a.workdir.resolve()
    steps = pipeline.make_steps(workdir, device)
    print(f"nnunet-cmedl demo: workdir {workdir}, device {device}, trainer {a.trainer}")
    data = pipeline.prepare_dataset(steps, a.dataset_id, a.dim, a.num_train, a.num_test, a.num_mri, a.seed)
    results = pipeline.train(steps, data, a.trainer, device)
    pred = pipeline.predict(steps, data, a.trainer, device, workdir / "predictions" / a.trainer)
    log = steps.run("evaluate: Dice, surface Dice (2 mm), HD95 per test case",
                    pipeline.OURS + ["evaluate", "-ref", data.raw_folder / "labelsTs", "-pred", pred,
                                     "--dataset-json", data.raw_folder / "dataset.json", "--per-case",
                                     "--overwrite"])
    print(log.read_text())
    fold = results / "fold_0"
    print(f"Figures:\n  synthetic data preview : {data.raw_folder / 'preview.png'}\n"
          f"  nnU-Net progress       : {fold / 'progress.png'}\n"
          f"  every CMEDL loss       : {fold / 'progress_cmedl.png'}\n"
          f"  CT / pMRI / MRI / label: {fold / 'cmedl_snapshots'}/\n"
          f"  predictions + metrics  : {pred}\n"
          f"Total time: {(time.time() - t_start) / 60:.1f} min")
    return 0
