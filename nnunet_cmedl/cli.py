"""``nnunet_cmedl <command>``: one entry point, one module per job (each has ``main(argv) -> int`` and --help; a
``module:function`` entry names another function of that shape)."""
import importlib
import sys

from nnunet_cmedl.errors import UserInputError

COMMANDS = {
    "env": ("nnunet_cmedl.env", "print `export nnUNet_extTrainer=...` so stock nnUNetv2_* commands find our trainers"),
    "make-synthetic": ("nnunet_cmedl.synthetic.cli", "write the synthetic thorax dataset (labelled CT or MRI) + the "
                                                     "unpaired volumes of the other modality"),
    "preprocess-unpaired": ("mri_unpaired.preprocess", "preprocess unpaired volumes (--modality MRI or CT) onto a "
                                                       "planned configuration of the labelled dataset"),
    "preprocess-mri": ("mri_unpaired.preprocess:main_mri", "preprocess-unpaired --modality MRI"),
    "paired-mri": ("nnunet_cmedl.synthetic.paired_mri", "an oracle for diagnostics: each CT patient's own MRI (a "
                                                        "phantom's, or registered real MRI), preprocessed onto the CT"),
    "add-small-config": ("nnunet_cmedl.small_config", "add a small-patch configuration (for CPU runs) to the plans"),
    "demo": ("nnunet_cmedl.demo", "the whole job on the embedded synthetic dataset, end to end"),
    "evaluate": ("nnunet_cmedl.evaluation.evaluate_cli", "DSC, surface Dice and HD95 per case for a prediction folder"),
    "compare": ("nnunet_cmedl.evaluation.compare_cli", "paired comparison (Wilcoxon) of two or more prediction folders"),
    "export-translated": ("nnunet_cmedl.inference.export_pmri", "translate labelled-modality volumes (CT) to the "
                                                                "unpaired modality (pseudo-MRI) with a CMEDL checkpoint"),
    "export-pmri": ("nnunet_cmedl.inference.export_pmri:main_pmri", "export-translated"),
    "tumour-contrast": ("nnunet_cmedl.evaluation.tumour_contrast", "does the pseudo-MRI show the tumours better "
                                                                   "than the CT? tumour vs surroundings, per tumour"),
    "panels": ("nnunet_cmedl.evaluation.panels", "PNG panels: CT, pMRI, MRI, reference/student/teacher contours"),
    "report": ("nnunet_cmedl.evaluation.report", "one HTML page for a trained model: curves, metrics, comparison"),
    "benchmark": ("nnunet_cmedl.benchmark", "train plain nnU-Net and CMEDL with the same budget and compare them"),
    "benchmark-merge": ("nnunet_cmedl.evaluation.benchmark_merge", "one benchmark summary (tests, curves, figures) "
                                                                   "from several, e.g. seeds of different sessions"),
    "benchmark-overview": ("nnunet_cmedl.evaluation.benchmark_overview",
                           "one forest plot of many benchmarks: each method vs its baseline, 95% CI over seeds"),
    "benchmark-speed": ("nnunet_cmedl.speed", "training s/iteration and peak memory, plain nnU-Net vs. CMEDL variants"),
}


def run_command(name: str, argv) -> int:
    module_name, _ = COMMANDS[name]
    module_name, _, function = module_name.partition(":")
    try:
        module = importlib.import_module(module_name)
        return int(getattr(module, function or "main")(argv) or 0)
    except UserInputError as e:
        print(f"nnunet_cmedl {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (no permission, a parent that is a file, disk full): one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"nnunet_cmedl {name}: error: {where}{e.strerror or e}; nothing was replaced", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nnunet_cmedl {name}: interrupted", file=sys.stderr)
        return 130


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: nnunet_cmedl <command> [options]   (nnunet_cmedl <command> --help for each)", "", "commands:"]
    lines += [f"  {c.ljust(width)}  {h}" for c, (_, h) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"nnunet_cmedl: error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


def _command_entry_point(name: str):
    def entry_point() -> None:
        sys.exit(run_command(name, sys.argv[1:]))
    entry_point.__name__ = "main_" + name.replace("-", "_")
    return entry_point


# one console script per job as well (nnunet_cmedl_env, nnunet_cmedl_preprocess_mri, ...), see pyproject.toml
globals().update({f"main_{c.replace('-', '_')}": _command_entry_point(c) for c in COMMANDS})

if __name__ == "__main__":
    sys.exit(main())
