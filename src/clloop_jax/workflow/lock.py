"""One writer per run folder: an ``fcntl.flock`` on ``.lock`` naming its holder (PID, host, start, command)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

__all__ = ["RunFolderError", "RunFolderBusy", "check_place", "LOCK_NAME"]


#: The lock file inside a run folder: held (``fcntl.flock``) by the one process writing the folder, and naming it.
LOCK_NAME = ".lock"


def say(path: str, text: str, notes: list) -> None:
    notes.append(text)
    print(f"{path}: {text}", file=sys.stderr, flush=True)


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f": {' '.join(map(str, holder['command']))}" if holder.get("command") else ""))


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 65536, 0).decode(errors="replace")
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def check_place(path) -> str:
    """The absolute form of ``path`` if a run folder can be there (an existing folder, or one that can be made);
    :class:`RunFolderError` naming the path and what is wrong otherwise: a file, a path under a file, a place
    without write permission. Nothing is created."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"the run folder must be a non-empty path, got {path!r}")
    full = os.path.abspath(os.fspath(path))
    if os.path.lexists(full) and not os.path.isdir(full):
        raise RunFolderError(f"{os.fspath(path)!r} is a file, not a folder (name a folder for the run)")
    probe = full
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RunFolderError(f"{os.fspath(path)!r}: {probe!r} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"{os.fspath(path)!r}: cannot write in {probe!r} (permission denied or a read-only "
                             f"file system)")
    return full


class FolderLock:
    """An exclusive ``flock`` on ``folder/.lock``, the file holding the holder's PID, host, start time and
    command. Released by :meth:`release`, which removes the file; a holder that died leaves its description, and the
    next one takes the lock over (with a message) when that PID is gone from this host."""

    def __init__(self, folder: str, notes: list):
        self.path = os.path.join(folder, LOCK_NAME)
        host = socket.gethostname()
        for attempt in range(40):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise RunFolderError(f"{self.path}: cannot create the run folder's lock file ({err.strerror})") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if holder.get("pid") and (holder.get("host") != host or _pid_alive(holder["pid"])):
                    raise RunFolderBusy(f"{folder!r} is in use by another run ({_describe(holder)}); wait for it to "
                                        f"end, or stop it (it stops after its current task and can be resumed)",
                                        holder) from None
                time.sleep(0.05)   # a holder that is just starting or just ending, or a brief look at the lock
                continue
            except OSError as err:
                os.close(fd)
                raise RunFolderError(f"{self.path}: cannot lock the run folder ({err.strerror})") from None
            try:   # the file may have been removed (and made again) by a holder that ended meanwhile
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        else:
            raise RunFolderBusy(f"{folder!r} is in use by another run (its lock stayed busy)", {})
        self.fd = None
        previous = _read_holder(fd)
        if previous:
            if previous.get("host") not in (None, host):
                os.close(fd)
                raise RunFolderBusy(f"{folder!r} was locked by a run on another host ({_describe(previous)}) that did "
                                    f"not release it; if that run is no longer running, delete {self.path} and try "
                                    f"again", previous)
            say(folder, f"took over the lock of a run that ended without releasing it ({_describe(previous)})",
                 notes)
        self.holder = {"pid": os.getpid(), "host": host,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": list(sys.argv)}
        self.fd = fd
        data = json.dumps(self.holder).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def __del__(self):
        self.release()

    def release(self) -> None:
        if getattr(self, "fd", None) is None:
            return
        try:
            os.unlink(self.path)   # while still held: a process waiting on this file sees it gone and retries
        except OSError:
            pass
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: a file, a path under a file, no write permission, not a run
    folder, a configuration edited by hand."""


class RunFolderBusy(RunFolderError):
    """Another live process holds the run folder's lock; ``holder`` describes it (PID, host, start time, command)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder
