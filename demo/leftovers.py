"""What a SIGKILLed demo Triton leaves behind, found before the kill and
removed after it.

A clean stop removes everything itself. A kill of the whole process group
does not: the Python-backend stubs' shared-memory regions and pytriton's
``psm_*`` blocks stay in /dev/shm (RAM), and Triton's copies of the model
files stay in /tmp/folderXXXXXX. The processes of the group name them all:
the regions in /proc/PID/maps, the model folders on the stubs' command lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

_PROC = Path("/proc")
_SHM_PREFIX = "/dev/shm/"
_STUB_NAME = "triton_python_backend_stub"
_MODEL_DIR_PREFIX = "/tmp/folder"


def group_pids(pgid: int, *, include_zombies: bool = False) -> list[int]:
    """PIDs of the processes in process group ``pgid``."""
    pids = []
    for stat in _PROC.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name is in parentheses and may hold spaces.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            state, group = fields[0], int(fields[2])
            if group == pgid and (include_zombies or state != "Z"):
                pids.append(int(stat.parent.name))
    return pids


def _mapped_shm(pid: int) -> set[Path]:
    with contextlib.suppress(OSError):
        lines = (_PROC / str(pid) / "maps").read_text().splitlines()
        return {Path(line.split(None, 5)[5]) for line in lines if f" {_SHM_PREFIX}" in line}
    return set()


def _stub_model_dirs(pid: int) -> set[Path]:
    with contextlib.suppress(OSError):
        argv = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        if len(argv) > 1 and argv[0].decode().endswith(_STUB_NAME):
            model_py = Path(argv[1].decode())  # /tmp/folderXXXXXX/<version>/model.py
            if str(model_py).startswith(_MODEL_DIR_PREFIX) and len(model_py.parts) > 3:
                return {Path(*model_py.parts[:3])}
    return set()


@dataclasses.dataclass(frozen=True, slots=True)
class Leftovers:
    shm_files: frozenset[Path]
    model_dirs: frozenset[Path]

    @classmethod
    def of_group(cls, pgid: int) -> Leftovers:
        pids = group_pids(pgid)
        return cls(
            shm_files=frozenset(p for pid in pids for p in _mapped_shm(pid)),
            model_dirs=frozenset(d for pid in pids for d in _stub_model_dirs(pid)),
        )

    def remove(self) -> None:
        for path in self.shm_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for directory in self.model_dirs:
            shutil.rmtree(directory, ignore_errors=True)
