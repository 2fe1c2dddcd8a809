"""Write outputs under a temporary name and rename them into place only when complete.

A crash or Ctrl-C therefore never leaves a half-written output under the final name, and an existing output is
never replaced unless the caller asked for it (``overwrite=True``)."""
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mri_unpaired.errors import UserInputError


def refuse_existing(path, overwrite: bool, what: str = "output") -> None:
    if os.path.exists(path) and not overwrite:
        raise UserInputError(f"{path}: {what} exists already; pass --overwrite to replace it")


@contextmanager
def atomic_directory(final_path, overwrite: bool = False):
    """Yield a temporary sibling directory; on success it replaces ``final_path``."""
    final_path = Path(final_path)
    refuse_existing(final_path, overwrite)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.tmp-", dir=final_path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private (0700); the final folder gets normal permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, final_path)


@contextmanager
def atomic_file(final_path, overwrite: bool = True, mode: str = "w"):
    """Yield an open file object on a temporary sibling; on success it is renamed to ``final_path``."""
    final_path = Path(final_path)
    refuse_existing(final_path, overwrite)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.name}.tmp-", dir=final_path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private (0600)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, final_path)


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_temp_path(final_path) -> str:
    """A temporary file path beside ``final_path`` with the same suffix (for writers that take a file name), with
    the permissions a new file gets from the umask (mkstemp's are private, 0600)."""
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final_path.stem}.tmp-", suffix="".join(final_path.suffixes),
                               dir=final_path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    return tmp


def remove_stale_temps(final_path) -> list:
    """Remove the temporary files that ``atomic_path(final_path)`` left beside it when its process was killed
    (SIGKILL, power loss: no cleanup ran). Only for outputs that one process owns, such as a trainer's checkpoints."""
    final_path = Path(final_path)
    stale = sorted(final_path.parent.glob(f".{final_path.stem}.tmp-*{''.join(final_path.suffixes)}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(final_path):
    """Yield a temporary path beside ``final_path`` for a writer that takes a file name (torch.save, savefig, an
    image writer); when the block succeeds, one ``os.replace`` puts it in place (an existing file stays readable
    until that instant); when it fails, the temporary file is removed and ``final_path`` is untouched."""
    tmp = atomic_temp_path(final_path)
    try:
        yield tmp
        os.replace(tmp, final_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_path(src, dst) -> None:
    """Move ``src`` onto ``dst``; an existing ``dst`` is moved aside first and removed only after the move."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, aside)
        os.replace(src, dst)
        if aside.is_dir():
            shutil.rmtree(aside)
        else:
            aside.unlink()
    else:
        os.replace(src, dst)
