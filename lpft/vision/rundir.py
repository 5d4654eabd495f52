"""Run directories: never reuse one for a different config, never share one between processes, and never
lose the last good checkpoint.

* A run directory ``<out>/<run_id>/`` holds the ``config.json`` of the run that made it. Before a run (or a
  sweep, or a table) uses an existing directory, the requested config is compared with the stored one field by
  field; any difference outside the bookkeeping fields is refused with the differing fields named, so a smoke
  run (``--limit 64``) and a real run can never be mixed in one folder.
* :class:`RunLock` (``<run_dir>/.lock``) keeps a duplicated or requeued job out of a directory in use.
* :func:`save_checkpoint` / :func:`load_checkpoint` write atomically, keep the previous file as
  ``<stem>.prev.pt`` and fall back to it when the newest one is damaged.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import socket
import time
import uuid
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from lpft.vision.io import torch_save_atomic

__all__ = ["BOOKKEEPING_FIELDS", "DERIVED_FIELDS", "RunConfigMismatch", "config_diff", "format_diff",
           "read_config", "check_same_config", "RunLock", "RunLockedError", "read_lock", "lock_is_stale",
           "save_checkpoint", "load_checkpoint", "prev_checkpoint_path", "CorruptCheckpointError",
           "CheckpointFallbackWarning"]

#: fields that do not change what a run computes (where it writes, how it is launched, how much it prints)
BOOKKEEPING_FIELDS = frozenset({
    "out", "run_id", "resume", "cache_dir", "data_root", "device", "quiet", "progress", "environment",
    "distributed", "preset", "provenance",
})
#: fields that the run derives from the data and weights; compared only when both sides have them
DERIVED_FIELDS = frozenset({"split_info", "backbone_weights_id", "transforms", "transforms_resolved", "classnames",
                            "dataset_root"})


class RunConfigMismatch(ValueError):
    """A run directory holds a run of another config."""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def config_diff(stored: Mapping[str, Any], requested: Mapping[str, Any], *,
                ignore: frozenset[str] | set[str] = BOOKKEEPING_FIELDS) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two resolved configs: ``{field: (stored, requested)}``.

    Bookkeeping fields (``ignore``) are skipped; derived fields (:data:`DERIVED_FIELDS`) are compared only when
    both configs carry them. A field present on one side only counts as a difference (``None`` on the other).
    """
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(stored) | set(requested)):
        if k in ignore:
            continue
        if k in DERIVED_FIELDS and (k not in stored or k not in requested):
            continue
        a, b = stored.get(k), requested.get(k)
        if not _same(a, b):
            out[k] = (a, b)
    return out


def format_diff(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``field: stored -> requested`` lines."""
    return "\n".join(f"  {k}: {a!r} (stored) != {b!r} (requested)" for k, (a, b) in diff.items())


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored ``config.json`` of a run directory, or ``None`` when it has none."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunConfigMismatch(f"{path} is not valid JSON ({e}); remove the run directory or choose another "
                                f"--out / --run-id") from None


def check_same_config(run_dir: str | Path, requested: Mapping[str, Any]) -> None:
    """Raise :class:`RunConfigMismatch` when ``run_dir`` holds a run whose config differs from ``requested``."""
    stored = read_config(run_dir)
    if stored is None:
        return
    diff = config_diff(stored, requested)
    if diff:
        raise RunConfigMismatch(
            f"{run_dir} holds a run with another config; refusing to reuse it. Differing fields:\n"
            f"{format_diff(diff)}\nChoose another --out / --run-id, or remove the directory to rerun."
        )


# --- run-directory lock --------------------------------------------------------------------------------
LOCK_NAME = ".lock"
_TAKEOVER_NAME = ".lock.takeover"


class RunLockedError(RuntimeError):
    """Another process holds (or may hold) the lock of a run directory."""


def _host() -> str:
    return socket.gethostname()


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), which tells a reused pid from the original."""
    try:  # field 22 (starttime), counted after the parenthesised command name (which may contain spaces)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    now = _proc_start(pid)
    return not (start is not None and now is not None and now != start)


def _scheduler_job() -> dict[str, str] | None:
    """This process's Slurm job id and restart count: a requeued job keeps its id and bumps the count."""
    jid = os.environ.get("SLURM_JOB_ID")
    return {"id": jid, "restart": os.environ.get("SLURM_RESTART_COUNT", "0")} if jid else None


def read_lock(run_dir: str | Path) -> dict[str, Any] | None:
    """The holder recorded in ``run_dir/.lock`` (``host``, ``pid``, ``started``, ...), or ``None`` when unlocked.

    A lock file that cannot be parsed (being written, or damaged) is returned as ``{"unreadable": text}``.
    """
    path, text = Path(run_dir) / LOCK_NAME, ""
    for _ in range(20):  # the holder may be between creating the file and writing it
        try:
            text = path.read_text()
            info = json.loads(text)
            if isinstance(info, dict) and "pid" in info and "host" in info:
                return info
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)
    return {"unreadable": text}


def lock_is_stale(info: Mapping[str, Any]) -> str | None:
    """Why the holder of a lock is known to be gone (a message), or ``None`` when it may still be running.

    Stale: the holder ran on this host and its pid is dead (or reused by a newer process), or it was an earlier
    incarnation of this Slurm job (a requeued job keeps ``SLURM_JOB_ID``, bumps ``SLURM_RESTART_COUNT``, and
    starts only after the old one ended). A holder on another host is never stale: its liveness is unknown.
    """
    if "unreadable" in info:
        return None
    mine, theirs = _scheduler_job(), info.get("job")
    if mine and isinstance(theirs, Mapping) and theirs.get("id") == mine["id"] \
            and str(theirs.get("restart")) != mine["restart"]:
        return f"it was taken by an earlier incarnation of Slurm job {mine['id']} (restart {theirs.get('restart')})"
    if info.get("host") == _host() and not _pid_alive(int(info["pid"]), info.get("pid_start")):
        return f"its holder (pid {info['pid']} on this host) is no longer running"
    return None


class RunLock:
    """Exclusive use of a run directory by one process: ``with RunLock(run_dir): ...``.

    Creates ``run_dir/.lock`` atomically (``O_CREAT | O_EXCL``) holding JSON ``{host, pid, started}`` (plus
    the Slurm job id and restart count inside a Slurm job). A second process (a duplicated or requeued job)
    gets :class:`RunLockedError` naming the holder's host and pid. A stale lock (:func:`lock_is_stale`) is
    taken over with a warning; a lock from another host is refused, the error saying how to remove it. Released
    on leaving the ``with`` block, also on exceptions; a process killed outright leaves its lock, which is then
    stale as described. Under ``torchrun`` only rank 0 should take it (the caller decides).

    Args:
        run_dir: the run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.info: dict[str, Any] | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockedError`; returns ``self``."""
        if self.info is not None:
            raise RunLockedError(f"{self.path} is already held by this RunLock object")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {"host": _host(), "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
                                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "token": uuid.uuid4().hex}
        if (job := _scheduler_job()) is not None:
            info["job"] = job
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(info, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            self.info = info
            return self
        raise RunLockedError(f"could not take {self.path}: other processes keep taking it")

    def _take_over_if_stale(self) -> None:
        holder = read_lock(self.run_dir)
        if holder is None:
            return  # released meanwhile: try again
        reason = lock_is_stale(holder)
        if reason is None:
            raise RunLockedError(_held_message(self.path, holder))
        # one process at a time replaces a stale lock, so two processes cannot both take it over
        guard = self.run_dir / _TAKEOVER_NAME
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise RunLockedError(f"another process is taking over the stale lock {self.path}; if none is, "
                                 f"remove {guard}") from None
        try:
            if read_lock(self.run_dir) == holder:  # still the same stale lock
                os.unlink(self.path)
                warnings.warn(f"taking over the stale lock {self.path} ({reason}; it was taken at "
                              f"{holder.get('started')})", stacklevel=4)
        finally:
            os.unlink(guard)

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if self.info is None:
            return
        info, self.info = self.info, None
        if (read_lock(self.run_dir) or {}).get("token") != info["token"]:
            warnings.warn(f"{self.path} was removed or taken over by another process while this one held it",
                          stacklevel=2)
            return
        os.unlink(self.path)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _held_message(path: Path, holder: Mapping[str, Any]) -> str:
    if "unreadable" in holder:
        return (f"{path} exists but cannot be read ({holder['unreadable'][:80]!r}); if no process is working in "
                f"this run directory, remove {path}")
    job = holder.get("job")
    where = f"pid {holder.get('pid')} on host {holder.get('host')}" + (
        f" (Slurm job {job.get('id')})" if isinstance(job, Mapping) else "")
    if holder.get("host") == _host():
        hint = f"that process is still running; stop it first (or wait for it), or remove {path} if it is not"
    else:
        hint = (f"its liveness cannot be checked from host {_host()}; if that process is no longer running, "
                f"remove {path}")
    return (f"run directory {path.parent} is in use by {where} since {holder.get('started')} (a duplicated or "
            f"requeued job?): {hint}")


# --- checkpoints ----------------------------------------------------------------------------------------
class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated or corrupt (and no usable previous checkpoint was allowed or found)."""


class CheckpointFallbackWarning(UserWarning):
    """A damaged checkpoint was replaced by the previous one (``<name>.prev.pt``)."""


def prev_checkpoint_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the previous version of ``path``: ``<dir>/<stem>.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev.pt")


def _looks_complete(path: Path) -> bool:
    # torch.save writes a zip archive whose central directory sits at the end: a truncated file has none
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _link_or_copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            # a hard link costs no copy; safe because checkpoints are only ever replaced by rename, never
            # rewritten in place (save_checkpoint / torch_save_atomic)
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """Write ``obj`` to ``path`` atomically, keeping the file it replaces as ``<stem>.prev.pt``.

    The old file is rotated first (hard link or copy, then rename), only when it is a complete archive, so
    ``<stem>.prev.pt`` holds the last good checkpoint; then ``obj`` is written with ``torch_save_atomic``:
    ``path`` is never missing or half-written. Keep ``obj`` to tensors, dicts, lists, tuples, numbers, strings
    and ``None`` so :func:`load_checkpoint` reads it with ``weights_only=True``. Under torchrun: rank 0 only.

    Args:
        obj: what to save (e.g. ``{"model": state_dict, "optimizer": ..., "epoch": 3}``).
        path: destination file (its folder is created).
    """
    path = Path(path)
    if path.exists():
        if _looks_complete(path):
            _link_or_copy_atomic(path, prev_checkpoint_path(path))
        else:
            warnings.warn(f"{path} is damaged; not rotating it into {prev_checkpoint_path(path)}", stacklevel=2)
    torch_save_atomic(obj, path)


def _load(path: Path, map_location: Any) -> Any:
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except Exception as e:  # torch reports damage as RuntimeError / EOFError / UnpicklingError / zip errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) and "Weights only" in first and _looks_complete(path):
            # an intact archive holding other objects: not damage, so no fallback
            raise pickle.UnpicklingError(f"{path} holds objects other than tensors / dicts / lists / numbers / "
                                         f"strings, which weights_only loading refuses: {first}") from e
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from e


def load_checkpoint(path: str | Path, *, fallback: bool = True, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(..., weights_only=True)``, falling back to the previous one.

    Args:
        path: checkpoint file written by :func:`save_checkpoint`.
        fallback: when ``path`` is truncated or corrupt and ``<stem>.prev.pt`` loads, return that instead (with
            a :class:`CheckpointFallbackWarning` naming the file used).
        map_location: passed to ``torch.load``.

    Returns:
        The saved object.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpointError: ``path`` is damaged and there is no usable previous checkpoint (or
            ``fallback=False``); the message names the file(s).
        pickle.UnpicklingError: the file is intact but holds objects ``weights_only`` loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return _load(path, map_location)
    except CorruptCheckpointError as err:
        prev = prev_checkpoint_path(path)
        if not fallback or not prev.is_file():
            raise
        try:
            obj = _load(prev, map_location)
        except CorruptCheckpointError as err2:
            raise CorruptCheckpointError(f"{err}; the previous checkpoint {prev} is damaged too") from err2
        warnings.warn(f"{err}; using the previous checkpoint {prev} instead", CheckpointFallbackWarning,
                      stacklevel=2)
        return obj
