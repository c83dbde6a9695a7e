"""Atomic file and folder writes: nothing half-written is ever visible under the final name.

Indexes, checkpoints and generated data are built in a hidden temporary sibling folder and renamed into place, so a
crash (or SIGKILL) leaves either the old complete folder or the new complete one, plus at worst a stale temp folder
that the next write removes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path


_HOST = socket.gethostname()
_counter = itertools.count()
_live: set[str] = set()  # this process's temp folders in use (a stale one may carry our PID after a restart)


def _tmp_sibling(path: Path, tag: str) -> Path:
    """``.NAME.TAG-PID-N@HOST``: unique per process, thread and call, and parseable by :func:`_writer_is_dead`."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{next(_counter)}@{_HOST}"


def _writer_is_dead(name: str, prefix: str) -> bool:
    """Whether the writer of the temp folder ``name`` (``PREFIX PID[-N][@HOST]``) is known to be gone.

    Only a writer on this host whose PID no longer exists counts as dead; another host's folder, an unparseable name
    or a live PID (including one owned by another user) is left alone."""
    rest = name[len(prefix):]
    rest, at, host = rest.partition("@")
    if at and host != _HOST:
        return False
    pid_text = rest.split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return name not in _live  # ours only if this process is writing it now (PIDs repeat across restarts)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, owned by someone else
        return False
    return False


def _sweep_stale(path: Path) -> None:
    """Remove temp folders of ``path`` left by killed writers (their PID is dead); live writers' are kept."""
    prefix = f".{path.name}.tmp-"
    for stale in path.parent.iterdir():
        if stale.name.startswith(prefix) and _writer_is_dead(stale.name, prefix):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, moving an existing ``path`` aside first. Another writer of the same target may swap
    in between (several ranks, two ``--overwrite`` runs): then retry, and the last writer to finish wins."""
    olds: list[Path] = []
    try:
        for _ in range(100):
            if path.exists():
                old = _tmp_sibling(path, "old")
                try:
                    os.replace(path, old)
                except FileNotFoundError:  # another writer moved it aside meanwhile
                    continue
                olds.append(old)
            try:
                os.replace(tmp, path)
                return
            except OSError as e:  # another writer put its folder in place meanwhile
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        raise OSError(errno.EBUSY, f"could not rename {tmp} to {path}: other writers kept replacing it")
    finally:
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


def check_out_dir(path: str | Path, *, overwrite: bool = False, replaces: str | None = None) -> None:
    """The up-front refusals of :func:`atomic_dir`, on their own: call it before long work whose result goes to
    ``path``, so a refused ``--out`` fails before the work, not after it."""
    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists (fix: choose another --out or pass --overwrite)")
    if replaces and path.exists() and (not path.is_dir() or any(path.iterdir())) and not (path / replaces).is_file():
        held = ", ".join(sorted(p.name for p in path.iterdir())[:5]) if path.is_dir() else "a file"
        raise FileExistsError(f"{path} exists and is not the kind of folder written here (no {replaces}; it holds "
                              f"{held}), so --overwrite does not replace it (fix: choose another --out, or delete "
                              "it yourself if it is unwanted)")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False, replaces: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename, on error it is deleted.

    Raises FileExistsError up front when ``path`` exists and ``overwrite`` is False, or when ``replaces`` names the
    file that marks the kind of folder written (an index's metadata, say) and an existing non-empty ``path`` lacks
    it: ``--overwrite`` then never deletes a folder of another kind (a training run, a model). Temp folders left by
    killed writers (dead PID, this host) are removed; a concurrent live writer's are not.
    """
    path = Path(path)
    check_out_dir(path, overwrite=overwrite, replaces=replaces)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    tmp = _tmp_sibling(path, "tmp")
    _live.add(tmp.name)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _live.discard(tmp.name)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block: processes on this host that use
    the same lock file run the block one at a time. The lock is released when the block ends or the process dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file via temp file + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_counter)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder at ``path``: no temp file left behind
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when ``SEARCHE1_FAULT`` equals it (crash-safety tests)."""
    import os

    if os.environ.get("SEARCHE1_FAULT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
