"""Write outputs under a temporary name and rename them into place only when complete.

A crash or Ctrl-C therefore never leaves a half-written output under the final name, and an existing output is
never replaced unless the caller asked for it (``overwrite=True``)."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mri_unpaired.errors import UserInputError


def refuse_existing(path, overwrite: bool, what: str = "output") -> None:
    if os.path.exists(path) and not overwrite:
        raise UserInputError(f"{path}: {what} exists already; pass --overwrite to replace it")


MANIFEST_NAME = ".nnunet_cmedl_manifest.json"


def write_manifest(folder, tool: str) -> None:
    """List every file under ``folder`` as written by ``tool``: proof for a later ``--overwrite`` that the folder is
    that tool's output and nobody added to it (``refuse_foreign``)."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    (folder / MANIFEST_NAME).write_text(json.dumps({"tool": tool, "files": files}, indent=1) + "\n")


def refuse_foreign(folder, tool: str, what: str = "output folder") -> None:
    """An existing ``folder`` may be replaced only if ``tool`` wrote it (its manifest) and it holds nothing else."""
    folder = Path(folder)
    if not folder.exists():
        return
    manifest = folder / MANIFEST_NAME
    keep = "--overwrite replaces only what it wrote itself; nothing was changed: choose another folder or remove it"
    try:
        listed = json.loads(manifest.read_text())
        if listed.get("tool") != tool:
            raise ValueError
        listed = set(listed["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserInputError(f"{folder}: this {what} was not written by {tool} (no valid {MANIFEST_NAME}); "
                             f"{keep}") from None
    others = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                    if p.is_file() and p.name != MANIFEST_NAME and str(p.relative_to(folder)) not in listed)
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise UserInputError(f"{folder}: this {what} holds {others[0]}{more}, not written by {tool}; {keep}")


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


@contextmanager
def exclusive_output(target, tool: str):
    """Only one run at a time writes ``target`` (a file, a prefix or a folder): a second run fails at once with one
    line, instead of both reporting success over each other's files. An flock on a file named after the target's
    real path in the temporary folder (nothing is added beside the user's files; the OS releases the lock when the
    process ends, however it ends). Runs on one machine only."""
    import fcntl
    import hashlib
    target = Path(target).absolute()
    folder = Path(tempfile.gettempdir()) / "nnunet_cmedl_locks"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o1777)  # like /tmp: every user's runs lock here
    key = hashlib.sha1(os.path.realpath(target).encode()).hexdigest()[:20]
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "its process is unknown"
            raise UserInputError(f"{target}: another run ({holder}) is writing it now; wait until it ends, or choose "
                                 f"another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{tool}, process {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)


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
