"""CPU defaults that keep a shared machine usable (docs/performance.md, "Contention").

With torch's defaults, a run on a small machine next to busy processes is many times slower
than idle (docs/performance.md has the figures): every parallel region's threads spin while
they wait for each other, and a team with one thread descheduled waits for that thread.
Spinning is what makes an idle machine fast, though (passive waiting slows an idle run).
So the ``shared`` policy (the default) looks once, as the CLI starts, at how many other
processes are busy, and only then:

* sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is first imported (``uhn_cli/__init__.py``
  calls ``set_openmp_env``): waiting OpenMP threads sleep instead of taking cores from the
  processes, and the teammates, that have work;
* gives ``uhn train`` as many intra-op threads as there are cores those processes leave
  free (at least one; ``choose_threads``).

On a machine idle at the start both stay at torch's defaults. Each measure is skipped when
the user set its variable (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``), and
``UHN_CPU_POLICY=torch`` keeps torch's defaults altogether (what ``benchmarks/contention.py``
compares against). This module imports torch (and uhn_spec, which imports torch) only
inside ``choose_threads``: the CLI imports it before torch.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from uhn_spec.errors import UHNError

POLICY_ENV = "UHN_CPU_POLICY"
POLICIES = ("shared", "torch")
LOADAVG = "/proc/loadavg"


def policy() -> str:
    return os.environ.get(POLICY_ENV, "shared")


def set_openmp_env() -> None:
    """Passive OpenMP waiting when other processes are busy, unless the user chose a wait
    policy; call before importing torch."""
    if policy() == "shared" and "OMP_WAIT_POLICY" not in os.environ and busy_when_started():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


# MKL's strict conditional numerical reproducibility: its fp32 GEMMs give the same bits on any
# thread count (without it, 1 and 2 threads differ by ~4e-7 in the digits generator's
# forward), which exact data parallel needs: a process of a torchrun job has 1 thread where a
# one-process run has all the cores (docs/distributed.md). Read when MKL initialises.
MKL_REPRODUCIBLE = ("MKL_CBWR", "AUTO,STRICT")


def set_reproducible_env() -> None:
    """Thread-count independent MKL GEMMs unless the user chose an MKL_CBWR; call before
    importing torch."""
    name, value = MKL_REPRODUCIBLE
    os.environ.setdefault(name, value)


_busy_at_start: list[int | None] = []  # measured once per process: set_openmp_env and choose_threads agree


def busy_when_started() -> int | None:
    """``other_busy_processes()`` as first measured in this process."""
    if not _busy_at_start:
        _busy_at_start.append(other_busy_processes())
    return _busy_at_start[0]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def other_busy_processes(samples: int = 3, interval: float = 0.005) -> int | None:
    """Runnable threads of other processes right now (the median of a few reads of the
    kernel's instantaneous count, less this one), or None where the kernel does not say.
    Not the load average: it lags by a minute, so it still counts a run that just ended."""
    counts = []
    for i in range(samples):
        try:
            with open(LOADAVG) as handle:
                running = int(handle.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, round(statistics.median(counts)))


@dataclass(frozen=True)
class ThreadChoice:
    policy: str
    threads: int  # intra-op threads this run uses
    cores: int
    busy_at_start: int | None  # other runnable threads when the run started
    omp_wait_policy: str | None
    reason: str

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        wait = self.omp_wait_policy or "OpenMP default"
        return f"cpu: {self.threads} of {self.cores} threads ({self.reason}); OMP_WAIT_POLICY {wait}"


def choose_threads() -> ThreadChoice:
    """Pick (and set) torch's intra-op thread count by the policy; says what it chose."""
    import torch

    name = policy()
    if name not in POLICIES:
        raise UHNError(f"{POLICY_ENV}={name!r}: use one of {', '.join(POLICIES)}")
    cores, current = usable_cores(), torch.get_num_threads()
    busy = busy_when_started() if name == "shared" else None

    def choice(threads: int, reason: str) -> ThreadChoice:
        torch.set_num_threads(threads)
        return ThreadChoice(name, threads, cores, busy, os.environ.get("OMP_WAIT_POLICY"), reason)

    if name == "torch":
        return choice(current, f"{POLICY_ENV}=torch: torch's default")
    if "OMP_NUM_THREADS" in os.environ:
        return choice(current, "OMP_NUM_THREADS is set")
    if busy is None:
        return choice(current, "load unknown here: torch's default")
    threads = max(1, min(current, cores - busy))
    return choice(threads, f"{busy} other busy at start")
