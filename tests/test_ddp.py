"""Multi-GPU training (issue 9, part 4) as nnU-Net's DDP runs it, on the CPU: 2 ranks with the gloo backend.

nnU-Net's run_ddp hard-codes nccl and CUDA, so this test starts the two ranks itself (this file run as a script,
MASTER_ADDR/PORT, ``init_process_group('gloo')``) and then does what run_ddp does: the trainer found by name,
``run_training()``, ``perform_actual_validation()``. What differs from the nccl path, in the ranks only: the backend;
the device (nnU-Net's ``__init__`` sets ``cuda:<rank>`` whenever DDP is on: the rank puts it back to the CPU and
drops the CUDA grad scalers); nnU-Net's own DDP of the student built without ``device_ids`` (nnU-Net passes
``[local_rank]``, which DDP refuses for a CPU module); no AMP, no torch.compile, no pinned memory, no augmentation
worker processes (nnUNet_n_proc_DA=0). Everything of ours runs as it does on GPUs.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BIN, SMALL_2D, run

WORLD_SIZE = 2
SEED = 0
# CycleGAN (the student with the hint, the teacher, two generators, two discriminators), CUT (generator + MLP heads,
# one discriminator) and a strategy (generator + segmenter in nnU-Net's network)
TRAINERS = ("nnUNetTrainerCMEDL_tinyCPU", "nnUNetTrainerCMEDL_FastCUT_tinyCPU", "nnUNetTrainerPseudoMRI_tinyCPU")
CMEDL = TRAINERS[0]
NONFINITE_ON_RANK_1 = (1, "teacher")  # (iteration, network): rank 1 alone sees a non-finite value there


# ---------------------------------------------------------------------------------------------- one rank
def weights(trainer) -> dict:
    """Every trained network's weights, flattened (the modules under the DDP wrappers)."""
    from nnunet_cmedl.distillation.hint import unwrap
    parts = {"network": unwrap(trainer.network), "i2i": trainer.i2i}
    if trainer.student_tap is not None:
        parts["teacher"] = unwrap(trainer.teacher)
    return {f"{p}.{k}": v.detach().clone() for p, m in parts.items() for k, v in m.state_dict().items()}


def train_one_rank(rank: int, trainer_name: str, out: Path) -> None:
    import importlib
    from nnunetv2.run.run_training import get_trainer_from_args

    record = {"rank": rank, "mri": [], "ct": []}
    trainer = get_trainer_from_args(os.environ["CMEDL_TEST_DATASET"], SMALL_2D, 0, trainer_name)  # run_ddp's lookup
    record["device_set_by_nnunet"] = str(trainer.device)
    trainer.device = torch.device("cpu")  # the gloo stand-in for cuda:<rank>
    trainer.grad_scaler = trainer.grad_scaler_discriminators = None
    trainer.seed = SEED  # the same seed on both ranks: the ranks must still draw different batches

    initialize = trainer.initialize

    def initialize_and_record():
        initialize()
        record["torch_seed"] = torch.initial_seed()  # what ExperimentMixin seeded this rank with
        record["initial"] = weights(trainer)
        record["batch_size"] = trainer.batch_size
        record["wrapped"] = {name: type(getattr(trainer, name)).__name__ for name in
                             ("network", "student_tap", "teacher_tap", "i2i_generator_pass", "i2i_discriminator_loss",
                              "segmenter_pass") if getattr(trainer, name, None) is not None}
    trainer.initialize = initialize_and_record

    class RecordedMRI:  # the trainer's MRI loader, recording what this rank draws
        def __init__(self, loader):
            self.loader = loader

        def __next__(self):
            batch = next(self.loader)
            record["mri"].append((list(batch["keys"]), float(batch["data"].double().sum()), batch["data"].shape[0]))
            return batch

    cmedl_module = importlib.import_module("nnunet_cmedl.training.nnUNetTrainerCMEDL")
    real_loader, real_clip = cmedl_module.get_unpaired_dataloader, torch.nn.utils.clip_grad_norm_
    cmedl_module.get_unpaired_dataloader = lambda *a, **k: RecordedMRI(real_loader(*a, **k))

    train_step = trainer.train_step

    def recorded_train_step(batch):
        record["ct"].append(float(batch["data"].double().sum()))
        return train_step(batch)
    trainer.train_step = recorded_train_step

    if trainer_name == CMEDL and rank == 1:  # a non-finite gradient norm that rank 0 does not see
        calls = []
        iteration, network = NONFINITE_ON_RANK_1

        def clip(parameters, *args, **kwargs):
            norm = real_clip(parameters, *args, **kwargs)
            if parameters and parameters[0] is next(trainer.teacher.parameters()):
                calls.append(None)
                if len(calls) == iteration + 1:
                    return norm * float("nan")
            return norm
        torch.nn.utils.clip_grad_norm_ = clip

    try:
        trainer.run_training()
    finally:
        cmedl_module.get_unpaired_dataloader, torch.nn.utils.clip_grad_norm_ = real_loader, real_clip
    if trainer_name == CMEDL:  # nnU-Net's final validation, each rank predicting its share of the cases (~30 s)
        trainer.perform_actual_validation(False)
    record["final"] = weights(trainer)
    record["logging"] = {k: list(v) for k, v in trainer.logger.local_logger.my_fantastic_logging.items()}
    # a resume restores this rank's random streams from rank 0's file (once rank 0 has written it)
    torch.distributed.barrier()
    trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    record["numpy_state_after_load"] = np.random.get_state()[1].copy()
    record["output_folder"] = trainer.output_folder
    torch.save(record, out / f"{trainer_name}_rank{rank}.pth")


def rank_main(rank: int, out: str, trainer_names) -> None:
    import torch.distributed as dist
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    # nnU-Net wraps the student with device_ids=[local_rank]: CUDA only
    nnunet_trainer_module.DDP = lambda module, device_ids=None, **kwargs: DistributedDataParallel(module, **kwargs)
    for name in trainer_names:
        train_one_rank(rank, name, Path(out))
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- the tests
def test_rank_seeds_keep_rank_0_and_offset_the_others():
    from nnunet_cmedl.training.ddp import rank_seed
    from nnunet_cmedl.training.experiment import worker_seeds
    assert rank_seed(None, 1) is None and rank_seed(7, 0) == 7  # single-process and rank 0 runs: unchanged
    seeds = [rank_seed(7, r) for r in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 2 ** 32 for s in seeds)
    workers = [worker_seeds(s, 2, 3) for s in seeds]  # the MRI loader's worker processes, per rank
    assert len({w for ws in workers for w in ws}) == 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(planned_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = dict(planned_dataset["env"], nnUNet_results=str(out / "results"), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), CMEDL_TEST_DATASET=str(planned_dataset["dataset_id"]))
    ranks = [subprocess.Popen([sys.executable, __file__, str(rank), str(out), *TRAINERS], env=env,
                              stdout=open(out / f"rank{rank}.log", "w"), stderr=subprocess.STDOUT)
             for rank in range(WORLD_SIZE)]
    try:
        codes = [p.wait(timeout=900) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    logs = "\n".join(f"--- rank {r}\n" + (out / f"rank{r}.log").read_text()[-3000:] for r in range(WORLD_SIZE))
    assert codes == [0] * WORLD_SIZE, logs
    records = {name: [torch.load(out / f"{name}_rank{r}.pth", weights_only=False) for r in range(WORLD_SIZE)]
               for name in TRAINERS}
    return {**planned_dataset, "out": out, "env": env, "records": records}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_both_ranks_train_their_own_batches_into_the_same_weights(ddp_runs, trainer):
    r0, r1 = ddp_runs["records"][trainer]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["device_set_by_nnunet"] == "cuda:0" and r1["device_set_by_nnunet"] == "cuda:1"
    # every network with an optimiser is trained through DDP (nnU-Net's own wrapper stays on self.network)
    expected = {"network", "i2i_generator_pass", "i2i_discriminator_loss"} | (
        {"segmenter_pass"} if "PseudoMRI" in trainer else {"student_tap", "teacher_tap"})
    assert r0["wrapped"] == {k: "DistributedDataParallel" for k in expected}
    # the configuration's batch of 2, split over the ranks as nnU-Net splits it, for the MRI too
    assert r0["batch_size"] == r1["batch_size"] == 1
    assert all(n == 1 for r in (r0, r1) for _, _, n in r["mri"]) and len(r0["mri"]) == 4
    # each rank draws its own CT and MRI patches: the same seed on both, offset by rank (rank 0 keeps it)
    assert r0["torch_seed"] == SEED != r1["torch_seed"]
    assert r0["ct"] != r1["ct"] and [m[1] for m in r0["mri"]] != [m[1] for m in r1["mri"]]
    # DDP broadcast rank 0's initial weights and averaged the gradients: the ranks' weights stay identical, and moved
    for key in r0["final"]:
        assert torch.equal(r0["initial"][key], r1["initial"][key]), key
        assert torch.equal(r0["final"][key], r1["final"][key]), key
    moved = [k for k in r0["final"] if not torch.equal(r0["initial"][k], r0["final"][k])]
    assert len(moved) > len(r0["final"]) // 2


@pytest.mark.parametrize("trainer", TRAINERS)
def test_logged_losses_are_gathered_over_the_ranks_and_finite(ddp_runs, trainer):
    r0, r1 = ddp_runs["records"][trainer]
    cmedl_keys = [k for k in r0["logging"] if k.startswith("cmedl_")]
    assert "cmedl_G_adversarial" in cmedl_keys and "cmedl_D" in cmedl_keys
    for key in cmedl_keys + ["train_losses", "val_losses", "mean_fg_dice"]:
        a, b = r0["logging"][key], r1["logging"][key]
        assert len(a) == 2 and np.array_equal(a, b, equal_nan=True), (key, a, b)
        assert "dice" in key or np.all(np.isfinite(a)), key  # a pseudo-Dice is NaN where nothing was to be found
    if trainer == CMEDL:  # the hint reaches the wrapped student; the teacher's pseudo-Dice (the gate) agrees
        assert all(v > 0 for v in r0["logging"]["cmedl_hint"])
        assert "cmedl_teacher_pseudo_dice_pmri" in cmedl_keys


def test_a_non_finite_value_on_one_rank_skips_the_step_on_every_rank(ddp_runs):
    iteration, network = NONFINITE_ON_RANK_1
    for r in ddp_runs["records"][CMEDL]:  # rank 0 saw nothing wrong, and skipped too (its weights equal rank 1's)
        logs = r["logging"]
        assert logs["cmedl_nonfinite_skips_" + network] == [1, 0], r["rank"]
        assert all(logs["cmedl_nonfinite_skips_" + n] == [0, 0] for n in ("generators", "student", "discriminators"))


@pytest.mark.parametrize("trainer", TRAINERS)
def test_rank_0_checkpoint_holds_plain_weights_and_every_ranks_random_streams(ddp_runs, trainer):
    r0, r1 = ddp_runs["records"][trainer]
    folder = Path(r0["output_folder"])
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for key, prefix in (("network_weights", "network."), ("cmedl_i2i_weights", "i2i."),
                        ("cmedl_teacher_weights", "teacher.")):
        assert not any(k.startswith("module.") or ".module." in k for k in ckpt[key]), key
        if prefix + next(iter(ckpt[key])) in r0["final"]:
            assert all(torch.equal(v, r0["final"][prefix + k]) for k, v in ckpt[key].items()), key
    assert (folder / "validation" / "summary.json").is_file() == (trainer == CMEDL)
    states = ckpt["cmedl_rng_state_per_rank"]
    assert len(states) == WORLD_SIZE and not np.array_equal(states[0]["numpy"][1], states[1]["numpy"][1])
    for r, rec in enumerate((r0, r1)):
        assert np.array_equal(rec["numpy_state_after_load"], states[r]["numpy"][1]), r


@pytest.mark.parametrize("trainer", TRAINERS)
def test_rank_0_checkpoint_loads_in_one_process_and_predicts_with_stock_nnunet(ddp_runs, trainer, monkeypatch,
                                                                              tmp_path):
    import SimpleITK as sitk
    from nnunet_cmedl import training
    from test_trainer_cmedl import make_trainer
    r0 = ddp_runs["records"][trainer][0]
    single = make_trainer(ddp_runs, getattr(training, trainer), SMALL_2D, monkeypatch)  # the DDP run's results
    assert not single.is_ddp
    single.load_checkpoint(str(Path(r0["output_folder"]) / "checkpoint_final.pth"))
    now = weights(single)
    assert now.keys() == r0["final"].keys() and all(torch.equal(now[k], r0["final"][k]) for k in now)
    # stock prediction from the DDP run's checkpoint (for FastCUT and pMRI-only the only one: tests/test_fast_cmedl.py
    # and test_strategies.py run CUT and CT+pMRI through the stock CLI)
    out = tmp_path / "pred"
    run([BIN / "nnUNetv2_predict", "-i", ddp_runs["raw_folder"] / "imagesTs", "-o", out, "-d",
         ddp_runs["dataset_id"], "-c", SMALL_2D, "-f", "0", "-tr", trainer, "--disable_tta", "-device", "cpu",
         "-npp", "0", "-nps", "0"], ddp_runs["env"])
    predictions = sorted(out.glob("*.nii.gz"))
    assert len(predictions) == 2
    assert all(set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))) <= {0, 1} for p in predictions)


if __name__ == "__main__":  # one rank: python test_ddp.py RANK OUTPUT_FOLDER TRAINER...
    rank_main(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
