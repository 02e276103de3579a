"""GFN2-xTB reference labels with tblite, and parallel resumable labelling.

Single points:

- :func:`make_calculator` -- one tblite ``TBLite`` (GFN2-xTB, verbosity 0). Make one per
  task and reuse it: tblite then restarts each SCF from the previous wavefunction.
- :func:`label_structure` -- energy (eV) and forces (eV/Å) of one geometry as a plain
  record, or ``None`` when the SCF does not converge (or gives non-finite numbers):
  failed structures are skipped and counted, never written.

Datasets: :func:`label_dataset` runs :class:`~invcalc.data.tasks.LabelTask` s through
any :class:`concurrent.futures.Executor` (or serially) and appends each finished
task to an extxyz file via :class:`~invcalc.data.store.ResumableExtxyz`; a rerun
skips finished tasks, and an interrupted run loses at most the tasks in flight.
Only the top-level function :func:`~invcalc.data.tasks.run_task` and plain data
(frozen dataclasses of str/int/float/tuple, dicts of numpy arrays) cross process
boundaries, so a Dask client's ``get_executor()`` works unchanged.

Threads: tblite parallelises with OpenMP. This library never sets ``OMP_NUM_THREADS``
(or any environment variable) in the calling process. Worker processes should be
limited to one thread each (several processes are much faster than several OpenMP
threads for molecules this small): :func:`make_process_pool` starts ``spawn`` workers
whose initializer :func:`set_openmp_threads` sets ``OMP_NUM_THREADS`` *in the worker*
and also calls ``omp_set_num_threads`` on an OpenMP runtime that is already loaded
(importing :mod:`invcalc` loads torch, which loads ``libgomp`` before the initializer
runs, so the environment variable alone would come too late). For Dask, start the
workers with ``OMP_NUM_THREADS=1`` in their environment.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
from ase import Atoms

if TYPE_CHECKING:
    from invcalc.data.tasks import LabelTask, TaskResult

#: Reference method written to every structure's ``info["ref_method"]``.
REFERENCE_METHOD = "GFN2-xTB"

Record = dict[str, Any]
"""A labelled structure as plain data: ``numbers`` (N,) int, ``positions`` (N, 3) Å,
``energy`` float eV, ``forces`` (N, 3) eV/Å, ``info`` dict of str/int/float, ``arrays``
dict of per-atom numpy arrays (e.g. ``mol_id``)."""


def tblite_version() -> str:
    """Installed tblite version (``"unknown"`` if the metadata is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tblite")
    except PackageNotFoundError:
        return "unknown"


def make_calculator(accuracy: float = 1.0, max_iterations: int = 250):
    """A tblite GFN2-xTB ASE calculator (verbosity 0, neutral, closed shell).

    Args:
        accuracy: tblite numerical accuracy (smaller is tighter; 1.0 is tblite's default).
        max_iterations: SCF iterations before tblite reports non-convergence.

    Raises:
        ImportError: tblite is not installed (``pip install invcalc[data]``).
    """
    try:
        from tblite.ase import TBLite
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "labelling needs tblite; install the data extra: pip install 'invcalc[data]'"
        ) from err
    return TBLite(
        method=REFERENCE_METHOD, verbosity=0, accuracy=accuracy, max_iterations=max_iterations
    )


def label_structure(atoms: Atoms, calc) -> Record | None:
    """GFN2-xTB single point of one geometry.

    Args:
        atoms: geometry (positions in Å); ``arrays["mol_id"]`` is carried over if present.
            Not modified.
        calc: a calculator from :func:`make_calculator`.

    Returns:
        A :data:`Record` with ``info`` empty, or ``None`` if the calculation failed (SCF
        not converged, invalid input) or gave non-finite numbers.
    """
    from ase.calculators.calculator import CalculationFailed, InputError

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    work.calc = calc
    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=np.float64)
    except (CalculationFailed, InputError):
        return None
    finally:
        work.calc = None
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        return None
    arrays = {k: atoms.arrays[k].copy() for k in ("mol_id",) if k in atoms.arrays}
    return {
        "numbers": atoms.numbers.copy(),
        "positions": atoms.positions.copy(),
        "energy": energy,
        "forces": forces,
        "info": {},
        "arrays": arrays,
    }


def record_to_atoms(record: Record) -> Atoms:
    """Atoms with a SinglePointCalculator holding the record's energy and forces."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=record["numbers"], positions=record["positions"])
    for key, value in record.get("arrays", {}).items():
        atoms.arrays[key] = np.asarray(value)
    atoms.info.update(record["info"])
    atoms.calc = SinglePointCalculator(
        atoms, energy=record["energy"], forces=np.asarray(record["forces"])
    )
    return atoms


def set_openmp_threads(n_threads: int = 1) -> None:
    """Limit OpenMP to ``n_threads`` in *this* process -- for worker initializers only.

    Sets ``OMP_NUM_THREADS`` (read by OpenMP runtimes loaded later), calls
    ``omp_set_num_threads`` on any of libgomp / libiomp5 / libomp already loaded, and
    ``torch.set_num_threads`` when torch is loaded (exploration runs a model's MD).
    Never call it from a process you do not own (e.g. a user's interpreter): it is
    the worker-side half of :func:`make_process_pool`.
    """
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    os.environ["OMP_NUM_THREADS"] = str(n_threads)
    if "torch" in sys.modules:  # already loaded (importing invcalc does): its own pool too
        sys.modules["torch"].set_num_threads(n_threads)
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so", "libomp.dylib"):
        try:
            lib = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        lib.omp_set_num_threads(ctypes.c_int(n_threads))


def make_process_pool(n_workers: int, omp_threads: int = 1) -> ProcessPoolExecutor:
    """A ``spawn`` process pool whose workers run :func:`set_openmp_threads`.

    ``spawn`` (not ``fork``) so that no OpenMP state is inherited from the parent.
    """
    import multiprocessing

    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=set_openmp_threads,
        initargs=(omp_threads,),
    )


@dataclass
class LabelSummary:
    """What :func:`label_dataset` did.

    Attributes:
        n_tasks: tasks in the plan.
        n_skipped: tasks already finished by an earlier run (not rerun).
        n_run: tasks finished now.
        n_structures: structures written now.
        n_label_failures: single points skipped now because xTB failed.
        n_shortfall: structures planned but not sampled (MD stopped early, broken bonds).
        n_sampling_failures: xTB failures while relaxing or building a Hessian.
        n_foreign: finished tasks in the output that are not in this plan.
        errors: ``(task_id, message)`` of tasks that raised; they are not recorded, so a
            rerun retries them.
        wall_seconds: time spent.
    """

    n_tasks: int = 0
    n_skipped: int = 0
    n_run: int = 0
    n_structures: int = 0
    n_label_failures: int = 0
    n_shortfall: int = 0
    n_sampling_failures: int = 0
    n_foreign: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def structures_per_second(self) -> float:
        """Throughput of this run (structures written / wall time)."""
        return self.n_structures / self.wall_seconds if self.wall_seconds > 0 else 0.0


def label_dataset(
    tasks: Iterable[LabelTask],
    output: str | Path,
    *,
    executor: Executor | None = None,
    max_in_flight: int | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
) -> LabelSummary:
    """Run labelling tasks and append their structures to a resumable extxyz file.

    Args:
        tasks: from :func:`invcalc.data.tasks.plan_tasks` (ids must be unique).
        output: extxyz path; its journal is ``output + ".done"``. Tasks recorded there are
            skipped; a partial write left by an interrupted run is cut off first.
        executor: any ``concurrent.futures.Executor`` (process pool, thread pool, a Dask
            client's ``get_executor()``); ``None`` runs the tasks here, one by one.
        max_in_flight: most tasks submitted at once (bounds memory and what an
            interruption can lose); default twice the executor's ``_max_workers`` (or
            the CPU count).
        on_result: called in this process after each task is written, with its
            :class:`~invcalc.data.tasks.TaskResult` (e.g. to advance a progress bar).

    Returns:
        A :class:`LabelSummary`.
    """
    from invcalc.data.store import ResumableExtxyz
    from invcalc.data.tasks import run_task

    tasks = list(tasks)
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("task ids must be unique")
    summary = LabelSummary(n_tasks=len(tasks))
    start = time.perf_counter()

    with ResumableExtxyz(output) as store:
        done = store.finished_tasks()
        summary.n_foreign = len(set(done) - set(ids))
        pending = [t for t in tasks if t.task_id not in done]
        summary.n_skipped = len(tasks) - len(pending)

        def commit(result: TaskResult) -> None:
            atoms = [record_to_atoms(r) for r in result.records]
            store.append(result.task_id, atoms, result.stats())
            summary.n_run += 1
            summary.n_structures += len(atoms)
            summary.n_label_failures += result.n_label_failures
            summary.n_shortfall += result.n_shortfall
            summary.n_sampling_failures += result.n_sampling_failures
            if on_result is not None:
                on_result(result)

        if executor is None:
            for task in pending:
                try:
                    result = run_task(task)
                except Exception as err:  # noqa: BLE001 - recorded, rerun retries it
                    summary.errors.append((task.task_id, repr(err)))
                    continue
                commit(result)
        else:
            limit = max_in_flight or 2 * (getattr(executor, "_max_workers", None) or os.cpu_count() or 1)
            queue = iter(pending)
            in_flight: dict[Future, str] = {}

            def refill() -> None:
                for task in queue:
                    in_flight[executor.submit(run_task, task)] = task.task_id
                    if len(in_flight) >= limit:
                        return

            try:
                refill()
                while in_flight:
                    finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                    for fut in finished:
                        task_id = in_flight.pop(fut)
                        try:
                            result = fut.result()
                        except Exception as err:  # noqa: BLE001
                            summary.errors.append((task_id, repr(err)))
                            continue
                        commit(result)
                    refill()
            finally:
                for fut in in_flight:
                    fut.cancel()
    summary.wall_seconds = time.perf_counter() - start
    return summary
