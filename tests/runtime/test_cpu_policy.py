"""The shared-machine CPU defaults: when other processes are busy as uhn starts, passive
OpenMP waiting (set before torch is imported) and the threads the free cores allow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import uhn_runtime.cpu_policy as cpu_policy


def env_after_importing_the_cli(busy: int, **env: str) -> str:
    """OMP_WAIT_POLICY as `uhn` leaves it with ``busy`` other processes, and whether torch
    was imported by then."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", cpu_policy.POLICY_ENV)}
    code = (
        f"import uhn_runtime.cpu_policy as p; p._busy_at_start.append({busy})\n"
        "import os, sys, uhn_cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_cli_sets_passive_waiting_before_torch_when_others_are_busy() -> None:
    assert env_after_importing_the_cli(busy=2) == "PASSIVE False"
    assert env_after_importing_the_cli(busy=0) == "None False"  # idle: spinning is faster
    assert env_after_importing_the_cli(busy=2, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"
    assert env_after_importing_the_cli(busy=2, UHN_CPU_POLICY="torch") == "None False"


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A 4-core machine whose kernel reports ``running`` runnable threads (this one included);
    torch.set_num_threads only records what it is given."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(cpu_policy.POLICY_ENV, raising=False)
    monkeypatch.setattr(cpu_policy, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # torch's default: one per core
    monkeypatch.setattr(torch, "set_num_threads", SET_THREADS.append)
    SET_THREADS.clear()
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(cpu_policy, "LOADAVG", str(loadavg))
    monkeypatch.setattr(cpu_policy, "_busy_at_start", [])  # as if this process had just started

    def running(count: int) -> None:
        loadavg.write_text(f"2.50 1.20 0.80 {count}/512 4242\n")

    return running


SET_THREADS: list[int] = []


@pytest.mark.parametrize(("running", "threads"), [(1, 4), (3, 2), (9, 1)])
def test_threads_are_the_cores_other_processes_leave(machine, running: int, threads: int) -> None:  # type: ignore[no-untyped-def]
    machine(running)
    choice = cpu_policy.choose_threads()
    assert (choice.threads, choice.busy_at_start, choice.policy) == (threads, running - 1, "shared")
    assert SET_THREADS == [threads] and choice.record()["threads"] == threads


def test_the_busy_count_is_read_from_the_kernel(machine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    machine(3)  # this process and two others
    cpu_policy.set_openmp_env()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and cpu_policy.busy_when_started() == 2


def test_the_users_thread_count_and_the_torch_policy_are_kept(machine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    machine(9)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_policy.choose_threads().threads == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(cpu_policy.POLICY_ENV, "torch")
    assert cpu_policy.choose_threads().threads == 4
    monkeypatch.setenv(cpu_policy.POLICY_ENV, "fastest")
    with pytest.raises(Exception, match="UHN_CPU_POLICY='fastest': use one of shared, torch"):
        cpu_policy.choose_threads()
