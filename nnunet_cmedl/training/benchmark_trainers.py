"""The trainers of ``nnunet_cmedl benchmark``: every method at every benchmark budget and seed, one class each.

``nnUNetTrainer<Method>_<budget>_seed<N>``, e.g. ``nnUNetTrainer_benchCPU_seed0`` (plain nnU-Net) or
``nnUNetTrainerCMEDL_noHint_benchCPU_seed2``. Each is the method's trainer with the budget's epochs, iterations and
I2I sizes, the seed, and light checkpoints for learning curves (``training/experiment.py``); a results folder per
seed, as nnU-Net names them. The classes are generated here from the three tables below, so a method, a budget or a
seed is one line.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_cmedl.training import variants
from nnunet_cmedl.training.experiment import ExperimentMixin
from nnunet_cmedl.training.nnUNetTrainerCMEDL import nnUNetTrainerCMEDL
from nnunet_cmedl.training import oracle
from nnunet_cmedl.training.strategies import nnUNetTrainerCTPseudoMRI, nnUNetTrainerPseudoMRI

# benchmark name -> trainer class (the first is the baseline)
METHODS = {
    "nnU-Net": nnUNetTrainer,
    "CMEDL": nnUNetTrainerCMEDL,
    "CMEDL_noHint": variants.nnUNetTrainerCMEDL_noHint,
    "CMEDL_CUT": variants.nnUNetTrainerCMEDL_CUT,
    "CMEDL_FastCUT": variants.nnUNetTrainerCMEDL_FastCUT,
    "CMEDL_hintWarmup": variants.nnUNetTrainerCMEDL_hintWarmup,
    "CMEDL_teacherAhead": variants.nnUNetTrainerCMEDL_teacherAhead,
    "CMEDL_teacherAheadMasked": variants.nnUNetTrainerCMEDL_teacherAheadMasked,
    "CMEDL_teacherAheadWarm": variants.nnUNetTrainerCMEDL_teacherAheadWarm,
    "CMEDL_warmMasked": variants.nnUNetTrainerCMEDL_warmMasked,
    "CMEDL_warmTumourMasked": variants.nnUNetTrainerCMEDL_warmTumourMasked,
    "CMEDL_warmOutputHint": variants.nnUNetTrainerCMEDL_warmOutputHint,
    "CMEDL_warmAfterOnset": variants.nnUNetTrainerCMEDL_warmAfterOnset,
    # the user trainer of the two-step recipe (README), its pre-training as long as its own training (stop 28)
    "CMEDL_warmTumourAfterOnset": variants.nnUNetTrainerCMEDL_warmTumourAfterOnset,
    "CMEDL_tseg5": variants.nnUNetTrainerCMEDL_tseg5,
    "CMEDL_hintNorm": variants.nnUNetTrainerCMEDL_hintNorm,
    "CMEDL_hintDeepStages": variants.nnUNetTrainerCMEDL_hintDeepStages,
    "CMEDL_hintLastStage": variants.nnUNetTrainerCMEDL_hintLastStage,
    "CMEDL_lambdaHint0p3": variants.nnUNetTrainerCMEDL_lambdaHint0p3,
    "CMEDL_lambdaHint0p1": variants.nnUNetTrainerCMEDL_lambdaHint0p1,
    "CMEDL_teacherAdamW": variants.nnUNetTrainerCMEDL_teacherAdamW,
    "CMEDL_identity": variants.nnUNetTrainerCMEDL_identity,
    "CMEDL_stridedStem": variants.nnUNetTrainerCMEDL_stridedStem,
    # a control, not a method: plain nnU-Net knocked off its seed's course at epoch 20 (experiment.py: reseed_at_epoch)
    "nnU-Net_reseed20": variants.nnUNetTrainer_reseedAt20,
    # the paper's other strategies (strategies.py): no student, the generator + segmenter is what predicts
    "pMRI-only": nnUNetTrainerPseudoMRI,
    "CT+pMRI": nnUNetTrainerCTPseudoMRI,
    # diagnostics, not methods (oracle.py): the teacher on each CT patient's own MRI, which only the phantom has
    "CMEDL_pairedOracleNoHint": oracle.nnUNetTrainerCMEDL_pairedOracleNoHint,
    "CMEDL_pairedOracleAfterOnset": oracle.nnUNetTrainerCMEDL_pairedOracleAfterOnset,
    "CMEDL_pairedOracleTumourAfterOnset": oracle.nnUNetTrainerCMEDL_pairedOracleTumourAfterOnset,
    # ... and a second CT network for teacher, started from plain nnU-Net trained on 4x the labels, 3x as long
    "CMEDL_ctTeacherAfterOnset": oracle.nnUNetTrainerCMEDL_ctTeacherAfterOnset,
    "CMEDL_ctTeacherOutputsAfterOnset": oracle.nnUNetTrainerCMEDL_ctTeacherOutputsAfterOnset,
    "CMEDL_ctTeacherTumourAfterOnset": oracle.nnUNetTrainerCMEDL_ctTeacherTumourAfterOnset,
    # a control (stop 27): the same CT teacher, trained on the student's 10 labelled cases only, 3x as long
    "CMEDL_ctTeacherSameLabelsTumourAfterOnset": oracle.nnUNetTrainerCMEDL_ctTeacherSameLabelsTumourAfterOnset,
}
# methods whose batches need ``nnunet_cmedl paired-mri`` (the benchmark runs it when one of them is asked for)
PAIRED_MRI_METHODS = tuple(m for m, c in METHODS.items() if issubclass(c, oracle.nnUNetTrainerCMEDL_pairedOracle))
# budget -> attributes; I2I sizes apply to CMEDL trainers only
BUDGETS = {
    # 2 CPU cores: 1200 iterations of batch 8 on 64x64 patches (nnunet_cmedl benchmark adds that configuration);
    # at 600, plain nnU-Net's training loss only starts to fall in the last epochs (validation pseudo-Dice 0)
    "benchCPU": dict(num_epochs=40, num_iterations_per_epoch=30, num_val_iterations_per_epoch=4, save_every=5,
                     curve_checkpoint_every=10,
                     cmedl=dict(generator_features=16, generator_res_blocks=3, discriminator_features=32,
                                save_snapshot_every=10)),
    # the benchCPU setting trained 3x longer (3600 iterations): where do the learning curves go after benchCPU's end?
    # (scripts/gpu_benchmark.py runs it on a GPU beside the benchCPU runs)
    "benchLong": dict(num_epochs=120, num_iterations_per_epoch=30, num_val_iterations_per_epoch=4, save_every=10,
                      curve_checkpoint_every=20,
                      cmedl=dict(generator_features=16, generator_res_blocks=3, discriminator_features=32,
                                 save_snapshot_every=20)),
    # a few seconds: checks the benchmark's machinery end to end (tests, dry runs of scripts/gpu_benchmark.py)
    "benchSmoke": dict(num_epochs=2, num_iterations_per_epoch=2, num_val_iterations_per_epoch=1, save_every=1,
                       curve_checkpoint_every=1,
                       cmedl=dict(generator_features=8, generator_res_blocks=1, discriminator_features=8,
                                  save_snapshot_every=1)),
    # one GPU: nnU-Net's planned configuration, 100 epochs of 250 iterations (nnUNetTrainer_100epochs)
    "benchGPU": dict(num_epochs=100, num_iterations_per_epoch=250, num_val_iterations_per_epoch=50, save_every=10,
                     curve_checkpoint_every=10, cmedl={}),
}
SEEDS = range(20)
# method -> (method, seed, budget[, fold]) of the run it warm-starts from (``warm_start``; budget None: the same
# budget; fold: the same fold unless given): one pre-training shared by every seed (nnunet_cmedl benchmark trains it
# first)
WARM_STARTS = {method: ("CMEDL_noHint", 0, None)
               for method in ("CMEDL_teacherAheadWarm", "CMEDL_warmMasked", "CMEDL_warmTumourMasked",
                              "CMEDL_warmOutputHint", "CMEDL_warmAfterOnset", "CMEDL_warmTumourAfterOnset")}
# stop 23: the pre-training trained 3x as long (3600 iterations), so that the generator renders the lung tumours:
# does a teacher that is ahead on more tumours teach the student more? Seed 3: beside plain nnU-Net's benchLong seed 3
WARM_STARTS["CMEDL_longWarmAfterOnset"] = ("CMEDL_noHint", 3, "benchLong")
# stop 24: the teacher trained on the true MRI of each CT patient (an oracle) is the warm start
for _method in ("CMEDL_pairedOracleAfterOnset", "CMEDL_pairedOracleTumourAfterOnset"):
    WARM_STARTS[_method] = ("CMEDL_pairedOracleNoHint", 0, None)
# stop 25: the best CT network this benchmark trains, plain nnU-Net on the reference fold (4x the labels), 3x as long
for _method in ("CMEDL_ctTeacherAfterOnset", "CMEDL_ctTeacherOutputsAfterOnset", "CMEDL_ctTeacherTumourAfterOnset"):
    WARM_STARTS[_method] = ("nnU-Net", 0, "benchLong", 1)
# stop 27: plain nnU-Net on the student's own fold, as long as longWarm's pre-training (seed 3, like that one)
WARM_STARTS["CMEDL_ctTeacherSameLabelsTumourAfterOnset"] = ("nnU-Net", 3, "benchLong", 0)


class nnUNetTrainerCMEDL_longWarmAfterOnset(variants.nnUNetTrainerCMEDL_warmAfterOnset):
    """warmAfterOnset under its own name, for the benchmark's runs warm-started from a 3x longer pre-training
    (WARM_STARTS). Used directly, it is warmAfterOnset."""


METHODS["CMEDL_longWarmAfterOnset"] = nnUNetTrainerCMEDL_longWarmAfterOnset


class nnUNetTrainerCMEDL_longWarmTumourAfterOnset(variants.nnUNetTrainerCMEDL_warmTumourAfterOnset):
    """warmTumourAfterOnset (the hint on the tumour voxels the teacher segments correctly; stop 26: with the
    CT-teacher oracle, this mask passed on about a quarter of the teacher's lead) under its own name, for the
    benchmark's runs warm-started from the 3x longer pre-training (WARM_STARTS), as longWarmAfterOnset."""


METHODS["CMEDL_longWarmTumourAfterOnset"] = nnUNetTrainerCMEDL_longWarmTumourAfterOnset
WARM_STARTS["CMEDL_longWarmTumourAfterOnset"] = WARM_STARTS["CMEDL_longWarmAfterOnset"]


class nnUNetTrainerCMEDL_longWarmTumourAfterOnsetPre4(nnUNetTrainerCMEDL_longWarmTumourAfterOnset):
    """longWarmTumourAfterOnset from another pre-training (CMEDL_noHint seed 4 at the long budget, not seed 3): does
    its gain (stop 27) belong to the method or to one lucky generator and teacher?"""


METHODS["CMEDL_longWarmTumourAfterOnsetPre4"] = nnUNetTrainerCMEDL_longWarmTumourAfterOnsetPre4
WARM_STARTS["CMEDL_longWarmTumourAfterOnsetPre4"] = ("CMEDL_noHint", 4, "benchLong")


class nnUNetTrainerCMEDL_ctTeacherSameRunTumourAfterOnset(oracle.nnUNetTrainerCMEDL_ctTeacherTumourAfterOnset):
    """A control for the two-step user trainer ``CMEDL_warmTumourAfterOnset`` (stop 30), not a method: its teacher is
    the CT network of that method's own pre-training run (``CMEDL_noHint`` seed 0 at the same budget, whose student is
    plain nnU-Net seed 0 bit for bit on the CPU, so the benchmark warm-starts from plain nnU-Net seed 0), with the
    same hint, mask and gate. Both students see the same pre-training, one through its pMRI teacher, the other
    through its CT network: does the two-step student's gain need the MRI at all?"""


METHODS["CMEDL_ctTeacherSameRunTumourAfterOnset"] = nnUNetTrainerCMEDL_ctTeacherSameRunTumourAfterOnset
WARM_STARTS["CMEDL_ctTeacherSameRunTumourAfterOnset"] = ("nnU-Net", 0, None, 0)


class nnUNetTrainerCMEDL_noHintFullI2I(variants.nnUNetTrainerCMEDL_noHint):
    """noHint with the trainer's own I2I sizes (generators of 32 features and 6 residual blocks, PatchGAN of 64; the
    cpu budget otherwise halves them, I2I_SIZES_KEPT): does a generator of twice the width and depth render the
    hard tumours that the cpu budget's does not (stop 35, ``nnunet_cmedl tumour-contrast``)?"""


METHODS["CMEDL_noHintFullI2I"] = nnUNetTrainerCMEDL_noHintFullI2I
# methods whose I2I sizes the budget leaves as the trainer sets them
I2I_SIZES_KEPT = {"CMEDL_noHintFullI2I"}
I2I_SIZES = ("generator_features", "generator_res_blocks", "discriminator_features")


def warm_start_source(method: str, budget: str, fold: int = 0):
    """(method, seed, budget, fold) of the run that ``method`` at ``budget`` and ``fold`` warm-starts from; None if it
    starts fresh."""
    if method not in WARM_STARTS:
        return None
    source_method, seed, source_budget, *source_fold = WARM_STARTS[method]
    return source_method, seed, source_budget or budget, source_fold[0] if source_fold else fold


def trainer_name(method: str, budget: str, seed: int) -> str:
    core = METHODS[method].__name__.removeprefix("nnUNetTrainer")
    return f"nnUNetTrainer{core}_{budget}_seed{seed}"


def _make(method: str, budget: str, seed: int) -> type:
    base = METHODS[method]
    settings = dict(BUDGETS[budget])
    cmedl_settings = settings.pop("cmedl")
    if method in I2I_SIZES_KEPT:
        cmedl_settings = {k: v for k, v in cmedl_settings.items() if k not in I2I_SIZES}

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        base.__init__(self, plans, configuration, fold, dataset_json,
                      *(() if device is None else (device,)))
        for k, v in {**settings, **(cmedl_settings if isinstance(self, nnUNetTrainerCMEDL) else {})}.items():
            setattr(self, k, v)
        self.seed = seed
        source = warm_start_source(method, budget, fold)
        if source:
            self.warm_start, self.warm_start_fold = trainer_name(source[0], source[2], source[1]), source[3]

    name = trainer_name(method, budget, seed)
    bases = (base,) if issubclass(base, ExperimentMixin) else (ExperimentMixin, base)
    attributes = {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                  "__doc__": f"{method} at the {budget} budget, seed {seed} (benchmark_trainers.py)"}
    if issubclass(base, nnUNetTrainerPseudoMRI):  # inference builds the generator from the class: sizes go there
        attributes["generator_settings"] = {**base.generator_settings, **{
            k: v for k, v in cmedl_settings.items() if k in base.generator_settings}}
    return type(name, bases, attributes)


__all__ = []
for _method in METHODS:
    for _budget in BUDGETS:
        for _seed in SEEDS:
            _cls = _make(_method, _budget, _seed)
            globals()[_cls.__name__] = _cls
            __all__.append(_cls.__name__)
