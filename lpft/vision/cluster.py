"""Sweep runs as submitit jobs (local processes or a Slurm job array), and where every run stands.

``python -m lpft.vision.sweep ... --executor local|slurm`` hands each planned run to :func:`submit_sweep`:

* one job per run, submitted together with ``executor.batch()`` (a Slurm job array, ``--array-parallelism``
  of them at a time). ``local`` runs them as child processes of the sweep, ``--array-parallelism`` (default 1)
  at a time, and waits for them; ``slurm`` submits and returns (``--wait`` to block).
* A job is a :class:`RunJob`: it calls ``lpft.vision.run.main(argv)`` and is checkpointable: on preemption or
  timeout submitit calls :meth:`RunJob.checkpoint`, which requeues the same run with ``--resume`` so it
  continues from ``ckpt/last.pt`` (the runner's ``RunLock`` lets the requeued incarnation in).
* ``--gpus-per-node N`` (N > 1) starts one task per GPU; inside the job the torchrun variables (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) are set from submitit's job environment
  (``submitit.helpers.TorchDistributedEnvironment``), so the runner's ``torch.distributed`` start-up works
  unchanged. Every task sees all GPUs of its node and picks ``cuda:LOCAL_RANK`` (do not bind GPUs per task).
* Job ids are kept in ``<logs>/jobs.json`` (logs: ``--logs``, default ``<out>/.submitit``), which
  :func:`run_states` (``--status``) reads together with the run directories, their locks and the job logs.

submitit is an optional dependency (``pip install 'lpft[cluster]'``), imported only when a job is submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lpft.vision.io import write_json_atomic
from lpft.vision.rundir import config_diff, lock_is_stale, read_config, read_lock

if TYPE_CHECKING:
    from lpft.vision.sweep import SweepRun

EXECUTORS = ("inline", "local", "slurm")
MANIFEST = "jobs.json"
_SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
# the last line of a Python traceback ("pkg.mod.SomeError: ...") or an argparse failure ("prog: error: ...")
_ERROR_LINE = re.compile(r"^([\w.]*(Error|Exception|Interrupt)\b|.*\berror: )")


def import_submitit():
    """The submitit module, or an ImportError saying how to install it."""
    try:
        import submitit
    except ImportError as e:
        raise ImportError("--executor local/slurm needs submitit: pip install 'lpft[cluster]'") from e
    return submitit


@dataclass
class ClusterOptions:
    """How to submit a sweep's runs (the ``--executor`` ... ``--logs`` flags)."""

    executor: str = "inline"
    partition: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    array_parallelism: int | None = None
    slurm_extra: dict[str, str] = field(default_factory=dict)
    logs: str | None = None
    wait: bool | None = None  # default: local waits, slurm returns after submitting
    poll_s: float = 0.5

    def logs_dir(self, out: str | os.PathLike) -> Path:
        return Path(self.logs) if self.logs else Path(out) / ".submitit"


def add_cluster_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the ``--executor`` group of flags to the sweep's parser."""
    g = ap.add_argument_group("executor (local / slurm need: pip install 'lpft[cluster]')")
    g.add_argument("--executor", choices=EXECUTORS, default="inline",
                   help="inline: one run after another in this process; local: submitit child processes; "
                        "slurm: one Slurm job per run (a job array)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per run; N > 1 runs N ranks (one task each)")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit of each job (it is requeued "
                   "with --resume when it runs out)")
    g.add_argument("--array-parallelism", type=int, default=None,
                   help="jobs running at once (slurm default: submitit's 256; local default 1)")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra #SBATCH option, e.g. account=abc or constraint=a100 (repeatable)")
    g.add_argument("--logs", default=None, help="submitit folder (job pickles and logs); default <out>/.submitit")
    g.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="wait for the jobs to finish (default: local waits, slurm does not)")


def options_from_args(args: argparse.Namespace) -> ClusterOptions:
    """:class:`ClusterOptions` from parsed flags; ``ValueError`` on bad values."""
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-extra expects KEY=VALUE (e.g. account=abc), got {item!r}")
        extra[key.strip().replace("-", "_")] = value
    for name in ("gpus_per_node", "nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        v = getattr(args, name)
        if v is not None and (v < 0 or (v == 0 and name not in ("gpus_per_node",))):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.executor != "slurm" and (args.partition or extra or args.nodes > 1):
        raise ValueError("--partition, --slurm-extra and --nodes > 1 need --executor slurm")
    return ClusterOptions(executor=args.executor, partition=args.partition, gpus_per_node=args.gpus_per_node,
                          nodes=args.nodes, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                          timeout_min=args.timeout_min, array_parallelism=args.array_parallelism,
                          slurm_extra=extra, logs=args.logs, wait=args.wait)


def make_executor(opts: ClusterOptions, folder: str | os.PathLike):
    """A ``submitit.AutoExecutor`` for ``opts`` (``cluster="local"`` or ``"slurm"``) writing into ``folder``."""
    if opts.executor not in ("local", "slurm"):
        raise ValueError(f"make_executor needs executor 'local' or 'slurm', got {opts.executor!r}")
    submitit = import_submitit()
    ex = submitit.AutoExecutor(folder=folder, cluster=opts.executor)
    params: dict[str, Any] = dict(name="lpft", timeout_min=opts.timeout_min, nodes=opts.nodes,
                                  gpus_per_node=opts.gpus_per_node, tasks_per_node=max(opts.gpus_per_node, 1))
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.executor == "slurm":
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.array_parallelism:
            params["slurm_array_parallelism"] = opts.array_parallelism
        if opts.slurm_extra:
            params["slurm_additional_parameters"] = dict(opts.slurm_extra)
    ex.update_parameters(**params)
    return ex


def export_torch_distributed_env() -> dict[str, str] | None:
    """Inside a multi-task submitit job, set the torchrun variables from the job environment.

    Returns:
        The variables set (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
        ``MASTER_PORT``), or ``None`` outside a job or in a single-task job (nothing to set).
    """
    submitit = import_submitit()
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None
    if env.num_tasks <= 1:
        return None
    # every task sees all GPUs of its node; the runner picks cuda:LOCAL_RANK itself
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: os.environ[k] for k in keys}


class RunJob:
    """One sweep run as a checkpointable submitit job: ``lpft.vision.run.main(argv)``.

    Args:
        argv: the runner's argv (:meth:`lpft.vision.sweep.SweepRun.launch_argv`).
        run_id: for logs and ``repr``.
    """

    def __init__(self, argv: Sequence[str], run_id: str = ""):
        self.argv = tuple(argv)
        self.run_id = run_id

    def __call__(self) -> str:
        """Run it (inside the job); returns the run directory."""
        export_torch_distributed_env()
        from lpft.vision.run import main

        return str(main(list(self.argv)))

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption / timeout: the same run again, continuing from its checkpoint.

        Returns:
            ``submitit.helpers.DelayedSubmission`` of a :class:`RunJob` whose argv ends with ``--resume``.
        """
        submitit = import_submitit()
        argv = self.argv if "--resume" in self.argv else self.argv + ("--resume",)
        return submitit.helpers.DelayedSubmission(RunJob(argv, self.run_id))

    def __repr__(self) -> str:
        return f"RunJob({self.run_id or ' '.join(self.argv)})"


# --- the job manifest --------------------------------------------------------------------------------------
def read_manifest(logs: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{run_id: {"job_id", "executor", "host", "submitted", "argv"}}`` of the jobs submitted into ``logs``."""
    path = Path(logs) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _submit_batch(ex, logs: Path, executor: str, runs: Sequence["SweepRun"]) -> list[tuple[Any, Any]]:
    """Submit ``runs`` as one batch (a Slurm job array) and add them to the manifest."""
    tasks = [RunJob(r.launch_argv(), r.run_id) for r in runs]
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    manifest = read_manifest(logs)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r, t, j in zip(runs, tasks, jobs):
        manifest[r.run_id] = {"job_id": str(j.job_id), "executor": executor, "host": socket.gethostname(),
                              "submitted": now, "argv": list(t.argv)}
        print(f"[sweep] submitted {r.run_id} as {executor} job {j.job_id}")
    write_json_atomic(logs / MANIFEST, manifest)
    return list(zip(runs, jobs))


def submit_sweep(runs: Sequence["SweepRun"], opts: ClusterOptions) -> dict[str, list[str]]:
    """Submit every run that is neither complete nor already running as one submitit job each.

    Args:
        runs: the plan (checked with :func:`lpft.vision.sweep.check_plan` by the caller).
        opts: executor and resources.

    Returns:
        Run ids: ``submitted``, ``skipped`` (complete, or a live job / lock holds them), and once waited for,
        ``done`` and ``failed``.
    """
    if not runs:
        return {"submitted": [], "skipped": []}
    logs = opts.logs_dir(runs[0].out)
    logs.mkdir(parents=True, exist_ok=True)
    states = {s.run_id: s for s in run_states(runs, logs)}
    todo = [r for r in runs if states[r.run_id].state not in ("done", "running", "queued")]
    status: dict[str, list[str]] = {"submitted": [r.run_id for r in todo],
                                    "skipped": [r.run_id for r in runs if r not in todo]}
    for rid in status["skipped"]:
        if states[rid].state != "done":
            print(f"[sweep] {rid} is {states[rid].state} ({states[rid].detail}); not submitted again")
    if not todo:
        return status
    ex = make_executor(opts, logs)
    wait = opts.wait if opts.wait is not None else opts.executor == "local"
    if opts.executor == "local":
        # local jobs are this process's children: at most `parallelism` at a time, new ones as slots free up
        parallelism = opts.array_parallelism or 1
        queue, running, finished = list(todo), [], []
        try:
            while queue or running:
                still = [(r, j) for r, j in running if not j.done()]
                finished += [p for p in running if p not in still]
                running = still
                if queue and len(running) < parallelism:
                    n = parallelism - len(running)
                    running += _submit_batch(ex, logs, "local", queue[:n])
                    queue = queue[n:]
                elif running:
                    time.sleep(opts.poll_s)
        except KeyboardInterrupt:  # do not leave orphaned runs behind; rerunning the sweep resumes them
            for _, job in running:
                job.cancel()
            raise
    else:
        finished = _submit_batch(ex, logs, opts.executor, todo)
        if not wait:
            return status
        for _, job in finished:
            job.wait()
    status["done"] = [r.run_id for r, _ in finished if r.is_complete()]
    status["failed"] = [r.run_id for r, _ in finished if not r.is_complete()]
    if status["failed"]:
        failed = [s for s in run_states(runs, logs) if s.run_id in status["failed"]]
        print(format_status(failed))
    return status


# --- status ------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where one planned run stands: ``state`` is done / running / queued / failed / interrupted /
    not started / config differs; ``detail`` says why (lock holder, job id, error line)."""

    run_id: str
    state: str
    detail: str = ""
    job_id: str | None = None
    log_tail: list[str] = field(default_factory=list)


def _log_lines(logs: Path, job_id: str) -> list[str]:
    # submitit's log naming for a folder without %j: <job_id>_<task>_log.err (task 0 = global rank 0)
    try:
        text = (logs / f"{job_id}_0_log.err").read_text(errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()]


def _error_line(lines: Sequence[str]) -> str | None:
    """The exception line of the last traceback in a log (else the last line that looks like an error)."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        found = [ln for ln in lines[starts[-1] + 1:] if not ln[0].isspace()]
        if found:
            return found[0].strip()
    errors = [ln.strip() for ln in lines if _ERROR_LINE.match(ln.strip())]
    return errors[-1] if errors else None


def _job_state(job: dict[str, Any], logs: Path) -> str:
    """``queued`` / ``running`` / ``finished`` / ``unknown`` for one manifest entry."""
    jid = job["job_id"]
    if (logs / f"{jid}_0_result.pkl").exists():
        return "finished"
    if job.get("executor") == "local":
        if job.get("host") != socket.gethostname():
            return "unknown"
        try:  # a local job id is the pid of its controller process
            os.kill(int(jid), 0)
        except ProcessLookupError:
            return "finished"
        except (PermissionError, ValueError):
            pass
        return "running"
    try:
        submitit = import_submitit()
        slurm_state = submitit.SlurmJob(logs, jid).state.split()[0].upper()
    except Exception:  # no submitit, or sacct unavailable
        return "unknown"
    if slurm_state in _SLURM_QUEUED:
        return "queued"
    if slurm_state in _SLURM_RUNNING:
        return "running"
    return "unknown" if slurm_state in ("UNKNOWN", "") else "finished"


def run_states(runs: Sequence["SweepRun"], logs: str | os.PathLike) -> list[RunState]:
    """The state of every planned run, from its run directory, its lock, and its job (``<logs>/jobs.json``)."""
    logs = Path(logs)
    manifest = read_manifest(logs)
    out = []
    for r in runs:
        job = manifest.get(r.run_id)
        jid = job["job_id"] if job else None
        if r.is_complete():
            out.append(RunState(r.run_id, "done", "records.jsonl", jid))
            continue
        stored = read_config(r.run_dir)
        diff = config_diff(stored, r.config) if stored is not None and r.config else {}
        if diff:
            out.append(RunState(r.run_id, "config differs", "fields: " + ", ".join(diff), jid))
            continue
        lock = read_lock(r.run_dir)
        if lock is not None and lock_is_stale(lock) is None:
            out.append(RunState(r.run_id, "running", f"lock: pid {lock.get('pid')} on {lock.get('host')}", jid))
            continue
        js = _job_state(job, logs) if job else None
        if js in ("queued", "running"):
            out.append(RunState(r.run_id, js, f"{job['executor']} job {jid}", jid))
        elif js == "finished":
            lines = _log_lines(logs, jid)
            out.append(RunState(r.run_id, "failed", _error_line(lines) or f"job {jid} ended without records", jid,
                                lines[-10:]))
        elif r.is_resumable() or stored is not None:
            out.append(RunState(r.run_id, "interrupted", "checkpoints; resumes with --resume" if r.is_resumable()
                                else "config.json but no records", jid))
        else:
            out.append(RunState(r.run_id, "not started", f"job {jid} state unknown" if jid else "", jid))
    return out


def format_status(states: Sequence[RunState]) -> str:
    """A table, one line per run, then the last lines of the stderr log of every failed job."""
    w = max([len(s.run_id) for s in states] + [6])
    lines = [f"{'run':<{w}}  {'state':<14}  {'job':<12}  detail"]
    lines += [f"{s.run_id:<{w}}  {s.state:<14}  {s.job_id or '-':<12}  {s.detail}" for s in states]
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    for s in states:
        if s.state == "failed" and s.log_tail:
            lines.append(f"--- {s.run_id}: last lines of job {s.job_id}'s stderr ---")
            lines += ["    " + ln for ln in s.log_tail]
    return "\n".join(lines)
