"""nnU-Net trainers of nnunet-cmedl. ``__all__`` is what the nnUNet_extTrainer folder re-exports."""
from nnunet_cmedl.training.nnUNetTrainerCMEDL import nnUNetTrainerCMEDL
from nnunet_cmedl.training.variants import (nnUNetTrainer_cpuBudget, nnUNetTrainer_tinyCPU,
                                            nnUNetTrainerCMEDL_5epochs, nnUNetTrainerCMEDL_100epochs,
                                            nnUNetTrainerCMEDL_cpuBudget, nnUNetTrainerCMEDL_CUT,
                                            nnUNetTrainerCMEDL_CUT_cpuBudget, nnUNetTrainerCMEDL_FastCUT_cpuBudget,
                                            nnUNetTrainerCMEDL_CUT_tinyCPU, nnUNetTrainerCMEDL_FastCUT,
                                            nnUNetTrainerCMEDL_FastCUT_tinyCPU, nnUNetTrainerCMEDL_hintBothWays,
                                            nnUNetTrainerCMEDL_identity, nnUNetTrainerCMEDL_stridedStem,
                                            nnUNetTrainerCMEDL_identity_cpuBudget,
                                            nnUNetTrainerCMEDL_stridedStem_cpuBudget,
                                            nnUNetTrainerCMEDL_noHint, nnUNetTrainerCMEDL_noHint_100epochs,
                                            nnUNetTrainerCMEDL_noHint_cpuBudget, nnUNetTrainerCMEDL_tinyCPU,
                                            nnUNetTrainerCMEDL_hintWarmup, nnUNetTrainerCMEDL_teacherAhead,
                                            nnUNetTrainerCMEDL_teacherAheadMasked, nnUNetTrainerCMEDL_teacherAheadWarm,
                                            nnUNetTrainerCMEDL_warmMasked, nnUNetTrainerCMEDL_warmTumourMasked,
                                            nnUNetTrainerCMEDL_warmOutputHint, nnUNetTrainerCMEDL_warmAfterOnset,
                                            nnUNetTrainerCMEDL_warmTumourAfterOnset,
                                            nnUNetTrainerCMEDL_tseg5, nnUNetTrainerCMEDL_hintNorm,
                                            nnUNetTrainerCMEDL_hintDeepStages, nnUNetTrainerCMEDL_hintLastStage,
                                            nnUNetTrainerCMEDL_lambdaHint0p3, nnUNetTrainerCMEDL_lambdaHint0p1,
                                            nnUNetTrainerCMEDL_teacherAdamW,
                                            nnUNetTrainerPseudoMRI_tinyCPU, nnUNetTrainerCTPseudoMRI_tinyCPU)
from nnunet_cmedl.training.strategies import nnUNetTrainerCTPseudoMRI, nnUNetTrainerPseudoMRI
from nnunet_cmedl.training.oracle import (nnUNetTrainerCMEDL_pairedOracle, nnUNetTrainerCMEDL_pairedOracleAfterOnset,
                                         nnUNetTrainerCMEDL_pairedOracleNoHint,
                                         nnUNetTrainerCMEDL_pairedOracleTumourAfterOnset)
from nnunet_cmedl.training import benchmark_trainers
from nnunet_cmedl.training.benchmark_trainers import *  # noqa: F401,F403  (generated: see that module)

__all__ = ["nnUNetTrainerCMEDL", "nnUNetTrainerCMEDL_5epochs", "nnUNetTrainerCMEDL_100epochs",
           "nnUNetTrainerCMEDL_CUT", "nnUNetTrainerCMEDL_FastCUT", "nnUNetTrainerCMEDL_CUT_tinyCPU",
           "nnUNetTrainerCMEDL_FastCUT_tinyCPU", "nnUNetTrainerCMEDL_CUT_cpuBudget", "nnUNetTrainerCMEDL_FastCUT_cpuBudget",
           "nnUNetTrainerCMEDL_hintBothWays", "nnUNetTrainerCMEDL_identity", "nnUNetTrainerCMEDL_stridedStem",
           "nnUNetTrainerCMEDL_identity_cpuBudget", "nnUNetTrainerCMEDL_stridedStem_cpuBudget", "nnUNetTrainerCMEDL_noHint", "nnUNetTrainerCMEDL_noHint_100epochs",
           "nnUNetTrainerCMEDL_noHint_cpuBudget", "nnUNetTrainerCMEDL_tinyCPU", "nnUNetTrainerCMEDL_cpuBudget",
           "nnUNetTrainer_tinyCPU", "nnUNetTrainer_cpuBudget", "nnUNetTrainerCMEDL_hintWarmup",
           "nnUNetTrainerCMEDL_teacherAhead", "nnUNetTrainerCMEDL_teacherAheadMasked",
           "nnUNetTrainerCMEDL_teacherAheadWarm", "nnUNetTrainerCMEDL_warmMasked",
           "nnUNetTrainerCMEDL_warmTumourMasked", "nnUNetTrainerCMEDL_warmOutputHint",
           "nnUNetTrainerCMEDL_warmAfterOnset", "nnUNetTrainerCMEDL_warmTumourAfterOnset", "nnUNetTrainerCMEDL_tseg5",
           "nnUNetTrainerCMEDL_hintNorm", "nnUNetTrainerCMEDL_hintDeepStages",
           "nnUNetTrainerCMEDL_hintLastStage", "nnUNetTrainerCMEDL_lambdaHint0p3",
           "nnUNetTrainerCMEDL_lambdaHint0p1", "nnUNetTrainerCMEDL_teacherAdamW",
           "nnUNetTrainerPseudoMRI", "nnUNetTrainerCTPseudoMRI", "nnUNetTrainerPseudoMRI_tinyCPU",
           "nnUNetTrainerCTPseudoMRI_tinyCPU", "nnUNetTrainerCMEDL_pairedOracle",
           "nnUNetTrainerCMEDL_pairedOracleNoHint", "nnUNetTrainerCMEDL_pairedOracleAfterOnset",
           "nnUNetTrainerCMEDL_pairedOracleTumourAfterOnset",
           *benchmark_trainers.__all__]
