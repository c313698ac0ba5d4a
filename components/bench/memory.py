"""Run one measured job in a fresh process: wall time, peak memory, a timeout and a memory cap.

Each clustering run of a benchmark gets its own ``spawn``-ed process, so the memory
one algorithm touched (and the allocator never gave back) is not charged to the
next, and a run that takes too long or too much can be stopped without losing the
benchmark. The child reports its own peak resident set (``VmHWM``, see
:func:`peak_rss_mb`); the parent also watches ``VmHWM``/``VmRSS`` in ``/proc`` while it
runs, which is the only figure left when the child has to be killed.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's
    own memory. Not ``ru_maxrss``: the kernel carries that across ``execve``, so a
    child spawned from a big parent would report the parent's size (measured here:
    a 540 MiB parent made every child "peak" at 540 MiB).
    Elsewhere: ``ru_maxrss`` (macOS reports bytes).
    """
    hwm, _ = _proc_status_mb(os.getpid())
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _proc_status_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmHWM, VmRSS) of a live process, in MiB; None where /proc cannot tell."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmHWM"), values.get("VmRSS")


def _child(function: Callable[[dict], dict], spec: dict, conn) -> None:
    try:
        out = dict(function(spec) or {})
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        conn.send(("ok", out))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent as a record
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}"))
    finally:
        conn.close()


def run_isolated(function: Callable[[dict], dict], spec: dict, timeout_s: float,
                 memory_cap_mb: float | None = None, poll_s: float = 0.25) -> dict[str, Any]:
    """Call ``function(spec)`` in a new ``spawn``-ed process and measure it.

    Args:
        function: a module-level function (the child imports it by name); it returns a
            small JSON-ready dict. It should measure its own work time (``seconds``) and,
            just before the work starts, ``baseline_rss_mb`` (see :func:`peak_rss_mb`), so
            start-up and data loading are not counted as the algorithm's.
        spec: its argument (picklable, small: pass file paths, not arrays).
        timeout_s: wall-clock limit for the whole child; past it the child is killed.
        memory_cap_mb: kill the child when its resident set goes above this.
        poll_s: how often the parent looks at the child.

    Returns:
        The function's dict plus ``status`` (``ok``, ``timeout``, ``memory cap``, ``error``
        or ``crashed``), ``peak_rss_mb`` (the child's own figure, or the largest the parent
        saw), ``wall_s`` (the child's whole life) and ``error`` when there is one.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(function, spec, send), daemon=True)
    began = time.perf_counter()
    process.start()
    send.close()
    seen_peak = 0.0
    message = None
    status = None
    while True:
        if receive.poll(poll_s):
            try:
                message = receive.recv()
            except EOFError:
                message = None
            break
        hwm, rss = _proc_status_mb(process.pid)
        seen_peak = max(seen_peak, hwm or 0.0, rss or 0.0)
        if not process.is_alive():
            break
        if time.perf_counter() - began > timeout_s:
            status = "timeout"
            break
        if memory_cap_mb is not None and rss is not None and rss > memory_cap_mb:
            status = "memory cap"
            break
    if status is not None:
        process.kill()
    process.join(timeout=30)
    wall = time.perf_counter() - began
    receive.close()
    if status is not None:
        out: dict[str, Any] = {"status": status, "peak_rss_mb": round(seen_peak, 1)}
        if status == "timeout":
            out["error"] = f"stopped after {timeout_s:.0f} s"
        else:
            out["error"] = f"stopped above {memory_cap_mb:.0f} MiB resident"
    elif message is None:
        out = {"status": "crashed", "peak_rss_mb": round(seen_peak, 1),
               "error": f"child exited with code {process.exitcode} and no result (killed by the OS?)"}
    elif message[0] == "error":
        out = {"status": "error", "peak_rss_mb": round(seen_peak, 1), "error": message[1]}
    else:
        out = {"status": "ok", **message[1]}
    out["wall_s"] = round(wall, 2)
    return out
