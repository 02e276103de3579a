"""A resumable, append-only extxyz file with a journal of finished tasks.

Layout: ``data.extxyz`` holds the structures; ``data.extxyz.done`` holds one JSON line per
finished task, ``{"task": id, "end": byte offset of data.extxyz after the task,
"n": structures, ...stats}``, written (and fsynced) *after* the task's structures.

So the journal is the commit record: on opening, anything in ``data.extxyz`` past the last
journalled ``end`` (a task interrupted mid-write) is cut off, as is a half-written last
journal line. A task is therefore either entirely in the file and journalled, or absent
and rerun; a rerun never duplicates structures.

Each structure is written by ASE's extxyz writer from an Atoms with a
SinglePointCalculator, so ``ase.io.read(path, ":")`` gives back energies (eV) and forces
(eV/Å) through ``atoms.get_potential_energy()`` / ``atoms.get_forces()``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ase import Atoms

JOURNAL_SUFFIX = ".done"


def journal_path(path: str | Path) -> Path:
    """The journal that belongs to an extxyz output."""
    return Path(str(path) + JOURNAL_SUFFIX)


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """Complete journal entries of an output, in order (a torn last line is ignored)."""
    entries, _ = _parse_journal(journal_path(path))
    return entries


def _parse_journal(jpath: Path) -> tuple[list[dict[str, Any]], int]:
    """(entries, byte length of the valid prefix)."""
    if not jpath.exists():
        return [], 0
    raw = jpath.read_bytes()
    entries: list[dict[str, Any]] = []
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:  # torn (or empty) last line: not committed
            break
        try:
            entry = json.loads(raw[pos:nl])
            entry["task"], entry["end"]  # noqa: B018 - required keys
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{jpath}: corrupt journal line at byte {pos}: {err}") from err
        entries.append(entry)
        pos = nl + 1
    return entries, pos


def read_dataset(path: str | Path) -> list[Atoms]:
    """Structures of the finished tasks of an output (everything, if there is no journal).

    Reads only up to the last journalled offset, so it is safe on a file that a running
    or interrupted job is appending to.
    """
    from ase.io import read

    path = Path(path)
    entries = read_journal(path)
    data = path.read_bytes()
    if entries:
        data = data[: entries[-1]["end"]]
    elif journal_path(path).exists():
        data = b""
    if not data.strip():
        return []
    return read(io.StringIO(data.decode("utf-8")), index=":", format="extxyz")


class ResumableExtxyz:
    """Append-only extxyz output with a commit journal (use as a context manager).

    Args:
        path: the extxyz file. Created with its parent folder if missing. An existing
            file without a journal is refused (it was not written by this class, or
            its journal was lost), rather than appended to or overwritten.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self._entries: list[dict[str, Any]] = []
        self._done: set[str] = set()
        self._data = None
        self._log = None

    def __enter__(self) -> "ResumableExtxyz":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Recover a consistent state (cut torn writes) and open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size and not self.journal.exists():
            raise ValueError(
                f"{self.path} exists but has no journal {self.journal.name}; "
                "refusing to append to a file this pipeline did not write (use a new path)"
            )
        entries, valid = _parse_journal(self.journal)
        committed = entries[-1]["end"] if entries else 0
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < committed:
            raise ValueError(
                f"{self.path} is shorter ({size} B) than its journal says ({committed} B); "
                "the data file was modified -- use a new output path"
            )
        if self.journal.exists() and self.journal.stat().st_size != valid:
            with open(self.journal, "r+b") as fh:
                fh.truncate(valid)
        with open(self.path, "ab") as fh:
            fh.truncate(committed)
        self._entries = entries
        self._done = {e["task"] for e in entries}
        self._data = open(self.path, "ab")
        self._log = open(self.journal, "ab")

    def close(self) -> None:
        """Close the files (everything appended is already on disk)."""
        for fh in (self._data, self._log):
            if fh is not None:
                fh.close()
        self._data = self._log = None

    def finished_tasks(self) -> dict[str, dict[str, Any]]:
        """Journal entries by task id."""
        return {e["task"]: e for e in self._entries}

    def append(self, task_id: str, structures: Sequence[Atoms], stats: dict[str, Any]) -> None:
        """Write one task's structures, then commit it in the journal.

        Args:
            task_id: the task's id (must not be finished already).
            structures: Atoms with SinglePointCalculators (may be empty: the task is
                still recorded as finished, with its failure counts).
            stats: JSON-able numbers stored in the journal entry.
        """
        from ase.io import write

        if self._data is None or self._log is None:
            raise RuntimeError("ResumableExtxyz is not open")
        if task_id in self._done:
            raise ValueError(f"task {task_id!r} is already in {self.journal}")
        if structures:
            buf = io.StringIO()
            write(buf, [_escaped(a) for a in structures], format="extxyz")
            self._data.write(buf.getvalue().encode("utf-8"))
            self._data.flush()
            os.fsync(self._data.fileno())
        entry = {"task": task_id, "end": self._data.tell(), "n": len(structures), **stats}
        self._log.write((json.dumps(entry) + "\n").encode("utf-8"))
        self._log.flush()
        os.fsync(self._log.fileno())
        self._entries.append(entry)
        self._done.add(task_id)


def _escaped(atoms: Atoms) -> Atoms:
    """A shallow copy whose string ``info`` values have backslashes escaped.

    ASE's extxyz reader treats ``\\`` as an escape character but its writer does not
    escape, so a SMILES such as ``C/C=C\\C`` would come back as ``C/C=CC``; escaping
    here makes the round trip exact.
    """
    out = atoms.copy()
    out.calc = atoms.calc
    for key, value in atoms.info.items():
        if isinstance(value, str) and "\\" in value:
            out.info[key] = value.replace("\\", "\\\\")
    return out
