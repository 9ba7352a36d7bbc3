"""The embedded PostgreSQL of one-machine mode (``$IDLEGRID_HOME/pg``): started
(or joined) through pgserver, recovered after a crash, and stopped.

After a power cut or an OOM kill the data directory keeps a stale
``postmaster.pid``. PostgreSQL removes one itself when its pid is dead, but
after a reboot (or in a container) the pid is often alive again as some other
process: PostgreSQL then refuses to start and pgserver takes the server for
running. :func:`clear_stale_pidfile` tells a live postmaster of this data
directory (``/proc/PID``: a ``postgres`` process whose working directory is
the data directory) from anything else, and removes the file only in the
second case. The next start runs PostgreSQL's crash recovery, which replays
the WAL: nothing committed is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import structlog

from idlegrid.common.errors import ConfigError

log = structlog.get_logger("db")

PIDFILE = "postmaster.pid"
START_TIMEOUT_S = 120.0  # crash recovery replays the WAL first
STOP_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 30.0
_POLL_S = 0.1
_PROC = Path("/proc")


def _pidfile_fields(pgdata: Path) -> list[str] | None:
    """The lines of ``postmaster.pid`` (None when absent)."""
    try:
        return (pgdata / PIDFILE).read_text().splitlines()
    except FileNotFoundError:
        return None


def _pid_of(lines: list[str]) -> int | None:
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return None
    return pid if pid > 0 else None


def is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live ``postgres`` serving ``pgdata`` (it runs in
    its data directory). Without /proc, any live pid counts."""
    if not _PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    proc = _PROC / str(pid)
    try:
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cwd = Path(os.readlink(proc / "cwd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, OSError):
        return False
    if state in ("Z", "X") or not Path(argv0).name.startswith("postgres"):
        return False
    return cwd.resolve() == pgdata.resolve()


def clear_stale_pidfile(pgdata: Path) -> bool:
    """Removes ``pgdata/postmaster.pid`` when no live postmaster of ``pgdata``
    holds it, and drops dead processes from pgserver's list of handles.
    Returns whether a stale file was removed."""
    _prune_handles(pgdata)
    lines = _pidfile_fields(pgdata)
    if lines is None:
        return False
    pid = _pid_of(lines)
    if pid is not None and is_postmaster_of(pid, pgdata):
        return False
    socket_dirs = {pgdata}
    if len(lines) > 4 and lines[4].strip():
        socket_dirs.add(Path(lines[4].strip()))
    for directory in socket_dirs:
        _clear_stale_socket_locks(directory, pgdata)
    with contextlib.suppress(FileNotFoundError):
        (pgdata / PIDFILE).unlink()
    log.warning("db.stale_pidfile_removed", pgdata=str(pgdata), pid=pid)
    return True


def _clear_stale_socket_locks(directory: Path, pgdata: Path) -> None:
    """The socket's lock file names the postmaster too; PostgreSQL refuses
    to start while that pid is alive (reused, or a zombie nobody reaped)."""
    for lock in directory.glob(".s.PGSQL.*.lock"):
        with contextlib.suppress(OSError):
            pid = _pid_of(lock.read_text().splitlines())
            if pid is not None and is_postmaster_of(pid, pgdata):
                continue
            lock.unlink()
            Path(str(lock).removesuffix(".lock")).unlink(missing_ok=True)


def _prune_handles(pgdata: Path) -> None:
    """pgserver stops the server when the last process on its list of
    handles exits; a killed process would stay on it forever."""
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return
    if not isinstance(pids, list):
        path.unlink(missing_ok=True)
        return
    alive = [p for p in pids if isinstance(p, int) and p > 0 and _alive(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _PROC / str(pid) / "stat"
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _answers(info) -> bool:
    """Whether the server's socket accepts a connection."""
    path = info.socket_path
    if path is None:
        addr, family = (info.hostname or "127.0.0.1", info.port), socket.AF_INET
    else:
        addr, family = str(path), socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(addr)
        except OSError:
            return False
    return True


def _wait_ready(pgdata: Path, timeout_s: float):
    """The PostmasterInfo of a live, ready server that answers, waiting up to
    ``timeout_s`` (crash recovery, a start under way); ConfigError after."""
    from pgserver.utils import PostmasterInfo

    deadline = time.monotonic() + timeout_s
    while True:
        info = PostmasterInfo.read_from_pgdata(pgdata) if (pgdata / PIDFILE).exists() else None
        if info is not None and is_postmaster_of(info.pid, pgdata) and info.status == "ready" and _answers(info):
            return info
        if time.monotonic() > deadline:
            raise ConfigError(f"the embedded PostgreSQL in {pgdata} did not become ready in {timeout_s:.0f} s"
                              f" (its log: {pgdata / 'log'})")
        time.sleep(_POLL_S)


def server(home: Path, *, cleanup_mode: str = "stop"):
    """Starts (or joins) the embedded PostgreSQL in ``home/pg`` and returns
    pgserver's handle once it answers; recovers from a stale pid file."""
    import logging as stdlib_logging
    import warnings

    warnings.filterwarnings("ignore", module="platformdirs")  # XDG_RUNTIME_DIR unset: harmless
    import pgserver
    from pgserver.postgres_server import PostgresServer

    stdlib_logging.getLogger("pgserver").setLevel(stdlib_logging.WARNING)
    home.mkdir(parents=True, exist_ok=True)
    pgdata = (home / "pg").resolve()
    pgdata.mkdir(exist_ok=True)
    with PostgresServer._lock:  # the lock pgserver starts servers under
        clear_stale_pidfile(pgdata)
    try:
        handle = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    except subprocess.TimeoutExpired:
        # pg_ctl's 10 s were too short (a long crash recovery): the server
        # goes on starting; wait for it, then join it.
        PostgresServer._instances.pop(pgdata, None)
        _wait_ready(pgdata, START_TIMEOUT_S)
        handle = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    except (subprocess.CalledProcessError, AssertionError) as e:
        PostgresServer._instances.pop(pgdata, None)
        raise ConfigError(f"cannot start the embedded PostgreSQL in {pgdata}: {e} (its log: {pgdata / 'log'})") from e
    _wait_ready(pgdata, ANSWER_TIMEOUT_S)
    return handle


def stop(home: Path, *, fast: bool = False) -> bool:
    """Stops the embedded PostgreSQL of ``home`` whoever started it: a clean
    shutdown (SIGINT to the postmaster, what ``pg_ctl -m fast`` sends), or
    with ``fast`` an immediate one (SIGQUIT: crash recovery at the next
    start); SIGKILL when it does not stop in time. Returns whether a server
    was running. (Signals rather than pg_ctl: as root, pgserver runs the
    server as another user, and pg_ctl refuses to run as root.)"""
    pgdata = (home / "pg").resolve()
    lines = _pidfile_fields(pgdata)
    pid = _pid_of(lines) if lines else None
    if pid is None or not is_postmaster_of(pid, pgdata):
        return False
    timeout_s = 5.0 if fast else STOP_TIMEOUT_S
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT if fast else signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while is_postmaster_of(pid, pgdata):
        if time.monotonic() > deadline:
            log.warning("db.embedded_stop_timed_out", pgdata=str(pgdata), pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # its children exit when the postmaster dies
            break
        time.sleep(_POLL_S)
    _forget(pgdata)
    return True


def _forget(pgdata: Path) -> None:
    """Drops this process's pgserver handle so that its exit hook does not
    act on a server that is already stopped."""
    from pgserver.postgres_server import PostgresServer

    handle = PostgresServer._instances.pop(pgdata, None)
    if handle is not None:
        import atexit

        atexit.unregister(handle._cleanup)
        handle.global_process_id_list.get_and_remove(os.getpid())
