"""searche1.io: atomic folder writes with concurrent writers, stale temp sweeping, the file lock."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from searche1 import io as sio
from searche1.io import atomic_dir, file_lock

WRITER = r'''
import sys
from searche1.io import atomic_dir
with atomic_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "part1").write_text("slow")
    print("ready", flush=True)
    sys.stdin.readline()               # e.g. a long save_pretrained; the test lets it go on
    (tmp / "part2").write_text("slow")
print("done", flush=True)
'''


def test_concurrent_writer_keeps_its_temp_folder(tmp_path: Path) -> None:
    """Two ranks write the same target: the second one's stale sweep must not delete the first one's live temp."""
    target = tmp_path / "out"
    slow = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "ready", slow.stderr.read()
        with atomic_dir(target, overwrite=True) as tmp:  # the fast writer, started while the slow one is mid-write
            (tmp / "part1").write_text("fast")
        assert (target / "part1").read_text() == "fast"
        out, err = slow.communicate("go\n", timeout=60)
    finally:
        slow.kill()
    assert slow.returncode == 0 and out.strip() == "done", err
    assert sorted(p.name for p in target.iterdir()) == ["part1", "part2"]  # the last writer to finish wins
    assert (target / "part2").read_text() == "slow"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_dead_local_writers(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getppid()
    names = {
        f".out.tmp-{dead}": False,                        # old naming, dead writer: swept
        f".out.tmp-{dead}-3@{sio._HOST}": False,          # dead writer on this host: swept
        f".out.tmp-{live}-0@{sio._HOST}": True,           # live writer: kept
        f".out.tmp-{live}": True,
        f".out.tmp-{dead}-1@other-host.example": True,    # another host's writer (shared filesystem): kept
        f".out.tmp-{os.getpid()}-99@{sio._HOST}": False,  # our PID but not ours (PID reused after a restart)
        ".out.tmp-garbage": True,                         # unparseable: kept
        ".other.tmp-1": True,                             # another target's
    }
    for n in names:
        (tmp_path / n).mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
    left = {p.name for p in tmp_path.iterdir()} - {"out"}
    assert left == {n for n, keep in names.items() if keep}


def test_failed_write_removes_its_temp(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_file_lock_serialises(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    order = []

    def second() -> None:
        with file_lock(lock):
            order.append("second")

    with file_lock(lock):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.2)  # not a timing assertion: the thread cannot get in however long we wait
        order.append("first")
    t.join(30)
    assert order == ["first", "second"]


def test_failed_text_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """atomic_write_text onto a folder (e.g. `eval --out DIR`) left `.DIR.tmp-PID` behind."""
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError):
        sio.write_json(tmp_path / "out", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    sio.write_json(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.json"]


def test_atomic_dir_replaces_only_its_kind(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="no MARK; it holds x.txt"):
        with atomic_dir(other, overwrite=True, replaces="MARK"):
            pass
    assert (other / "x.txt").read_text() == "keep"
    for target in (tmp_path / "new", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        with atomic_dir(target, replaces="MARK") as tmp:
            (tmp / "MARK").write_text("1")
        with atomic_dir(target, overwrite=True, replaces="MARK") as tmp:
            (tmp / "MARK").write_text("2")
        assert (target / "MARK").read_text() == "2"
