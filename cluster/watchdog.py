"""A watchdog for the local Ray a driver starts: when the driver's process is gone (SIGKILL, OOM
kill), it stops that Ray session's processes (GCS, raylet, dashboard and runtime-env agents,
workers), so a killed ``jobs.sweep`` leaves nothing running.

    start_watchdog(session_dir)          # in the driver, right after ray.init started a local Ray
    python -m cluster.watchdog --pid PID --session-dir /tmp/ray/session_...   # what that runs

The session's processes are those whose command line names the session folder (Ray passes it to
each of its daemons) and their descendants (the workers): never another Ray instance on the
machine. After a clean ``ray.shutdown()`` there is nothing left to stop and the watchdog just exits
with the driver.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

POLL_S = 1.0
GRACE_S = 5.0


def session_processes(session_dir: str, exclude: int | None = None) -> list[psutil.Process]:
    """The live processes of the Ray session in ``session_dir``: those whose command line names it, and
    their descendants (``exclude``: a pid left out, e.g. the watchdog's own)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != exclude and any(session_dir in arg for arg in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(exclude or -1, None)
    return list(found.values())


def stop_processes(procs: list[psutil.Process], grace_s: float = GRACE_S) -> int:
    """SIGTERM ``procs``, SIGKILL those left after ``grace_s``; how many there were."""
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    if procs:
        logger.warning("stopped %d process(es) of a Ray session whose driver is gone", len(procs))
    return len(procs)


def watch(pid: int, session_dir: str, poll_s: float = POLL_S) -> int:
    """Wait for process ``pid`` to end, then stop the session's processes; how many were stopped.

    The session's process tree is recorded at every poll while the driver lives: a local Ray's GCS and
    raylet share the driver's fate (they end with it), and the agents and workers they started then
    belong to no session process any more (their command lines, rewritten to ``ray::...``, do not name
    the folder), so only the record finds them. ``psutil`` refuses a recorded pid that was reused."""
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    try:
        driver = psutil.Process(pid)
        while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            known.update((p.pid, p) for p in session_processes(session_dir, exclude=me))
            time.sleep(poll_s)
    except psutil.NoSuchProcess:
        pass
    known.update((p.pid, p) for p in session_processes(session_dir, exclude=me))
    return stop_processes([p for p in known.values() if p.is_running()])


def start_watchdog(session_dir: str, pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog of driver ``pid`` (default: this process) over the Ray session ``session_dir``,
    detached (its own session: a signal to the driver's process group does not reach it)."""
    cmd = [sys.executable, "-m", "cluster.watchdog", "--pid", str(pid or os.getpid()), "--session-dir", session_dir]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True, help="the driver process to watch")
    p.add_argument("--session-dir", required=True, help="the Ray session folder of the local Ray it started")
    args = p.parse_args(argv)
    watch(args.pid, args.session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
