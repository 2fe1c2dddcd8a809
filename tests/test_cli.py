"""Every job has a CLI that explains itself, a console script of its own, and one-line errors."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_cmedl import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"nnunet_cmedl {command}" in out and len(out.splitlines()) > 3


def test_every_command_has_a_console_script():
    scripts = dict(re.findall(r'^(nnunet_cmedl\w*) = "([\w.:]+)"', (REPO / "pyproject.toml").read_text(), re.M))
    for command in cli.COMMANDS:
        name = "nnunet_cmedl_" + command.replace("-", "_")
        assert scripts.get(name) == f"nnunet_cmedl.cli:main_{command.replace('-', '_')}", name
        assert callable(getattr(cli, f"main_{command.replace('-', '_')}"))
    assert scripts["nnunet_cmedl"] == "nnunet_cmedl.cli:main"


def test_every_trainer_the_docs_tell_users_to_train_exists_and_is_exported():
    """A `-tr NAME` in README.md or docs/*.md names a trainer that nnU-Net's lookup finds (the ext_trainers module
    re-exports nnunet_cmedl.training.__all__): the README's recipes, the two-step one included, stay runnable."""
    from nnunet_cmedl import training
    named = {name for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
             for name in re.findall(r"-tr (nnUNetTrainer\w+)", doc.read_text())}
    assert {"nnUNetTrainerCMEDL", "nnUNetTrainerCMEDL_noHint", "nnUNetTrainerCMEDL_warmTumourAfterOnset"} <= named
    missing = sorted(name for name in named if name not in training.__all__ or not hasattr(training, name))
    assert not missing, f"named in the docs, not exported: {missing}"


def test_usage_and_unknown_command():
    r = subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli"], capture_output=True, text=True)
    assert r.returncode == 2 and "commands:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nnunet_cmedl.cli", "trian"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command 'trian'" in r.stderr
