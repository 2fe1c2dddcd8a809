#!/usr/bin/env python
"""What inference costs with each strategy's deployed network vs plain nnU-Net (= CMEDL's student): parameters and
forward time of one patch, side by side in one run (CPU, one thread; on a GPU the ratio is what to compare).

usage: python scripts/strategy_inference_cost.py PLANS.json CONFIGURATION [CONFIGURATION ...]
(the generator has the default sizes of nnUNetTrainerPseudoMRI.generator_settings)
"""
import json
import sys
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_cmedl.training.strategies import nnUNetTrainerCTPseudoMRI, nnUNetTrainerPseudoMRI

NETWORKS = (("plain nnU-Net / CMEDL student", nnUNetTrainer), ("pMRI-only", nnUNetTrainerPseudoMRI),
            ("CT+pMRI", nnUNetTrainerCTPseudoMRI))


def main(argv) -> int:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    torch.set_num_threads(1)
    plans = PlansManager(json.load(open(argv[0])))
    for configuration in argv[1:]:
        cm = plans.get_configuration(configuration)
        x = torch.randn(1, 1, *cm.patch_size)
        rows = []
        for name, cls in NETWORKS:
            net = cls.build_network_architecture(plans, cm, 1, 2, False).eval()
            with torch.no_grad():
                net(x)
                start, repeats = time.perf_counter(), 5
                for _ in range(repeats):
                    net(x)
            rows.append((name, sum(p.numel() for p in net.parameters()) / 1e6, (time.perf_counter() - start) / repeats))
        print(f"{configuration}: patch {list(cm.patch_size)}")
        for name, params, seconds in rows:
            print(f"  {name:32s} {params:6.2f} M parameters {seconds * 1000:9.1f} ms/patch {seconds / rows[0][2]:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
