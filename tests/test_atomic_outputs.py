"""Outputs written through mri_unpaired.atomic: one os.replace puts a complete file in place, with the permissions
a new file gets from the umask (not mkstemp's private 0600); a failed write changes nothing and leaves no file."""
import os

import pytest
import torch

from mri_unpaired.atomic import atomic_path, current_umask


def normal_mode() -> int:
    return 0o666 & ~current_umask()


def test_atomic_path_writes_with_normal_permissions_and_replaces_in_one_step(tmp_path):
    target = tmp_path / "checkpoint_final.pth"
    with atomic_path(target) as tmp:
        assert not target.exists() and os.path.dirname(tmp) == str(tmp_path)
        torch.save({"epoch": 1}, tmp)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert target.stat().st_mode & 0o777 == normal_mode()
    inode = target.stat().st_ino
    with atomic_path(target) as tmp:
        torch.save({"epoch": 2}, tmp)
        assert torch.load(target, weights_only=True) == {"epoch": 1}  # the old one stays readable until the rename
    assert torch.load(target, weights_only=True) == {"epoch": 2} and target.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "progress.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_saved_figures_get_normal_permissions(tmp_path):
    from nnunet_cmedl import plotting
    fig, ax = plotting.subplots()
    ax.plot([0, 1])
    plotting.save_figure(fig, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_mode & 0o777 == normal_mode()
