"""A real, private PostgreSQL server on loopback, for end-to-end tests.

No mock and no system service: Debian's binaries (``/usr/lib/postgresql/*/bin``,
the highest version) run a throw-away cluster of our own, listening on
127.0.0.1 on a random free port and on a Unix socket in its own directory.
The system cluster (if any) is neither read nor started nor stopped.

initdb and postgres refuse to run as root: when the tests run as root, every
server command goes through ``runuser -u postgres --`` (the system user
Debian's package creates); otherwise it runs as the current user.

Where the files are: the data directory, the socket directory and the log
live in a directory of their own under /tmp (``mss-pg-*``, mode 0755), linked
from ``folder/runtime``, not under the folder the test gives. The postgres
user must be able to search every parent of the data directory, and pytest's
basetemp (/tmp/pytest-of-root) is 0700 — and reset to 0700 by each pytest
session that starts, so even a chmod would not last. A short path also keeps
the socket's path (``.../socket/.s.PGSQL.PORT``) under the 107 bytes a Unix
socket's address allows, which a deep pytest folder can exceed. ``close()``
stops the server, copies the log into the folder (``folder/postgresql.log``)
and removes that directory; ``stop()`` keeps it, so that ``start()`` brings the
same data back on the same port.

Usage::

    with PostgresServer(tmp / "pg") as server:
        server.create_role("relay", "secret")
        server.create_database("relay", owner="relay")
        url = server.url("relay", "relay", password="secret")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql as pgsql

POSTGRESQL_LIB = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"  # Debian's package creates it; the cluster's files belong to it
SUPERUSER = "postgres"  # the cluster's superuser role (initdb -U)
HOST = "127.0.0.1"
START_TIMEOUT = 30  # seconds, for pg_ctl -w -t
STOP_TIMEOUT = 30
KILL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout
PORT_ATTEMPTS = 5

# What Cursor.execute takes (psycopg.abc.Query also has 3.14's Template,
# which execute's signature does not list before Python 3.14).
Statement = str | bytes | pgsql.SQL | pgsql.Composed


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries (or what running them needs) are missing."""


@dataclass(frozen=True)
class PostgresBinaries:
    version: str
    bin_dir: Path

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.bin_dir / "pg_ctl"

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"


def _version_key(name: str) -> tuple[int, ...]:
    """'15' -> (15,), '9.6' -> (9, 6): numeric order, so that 15 beats 9.6."""
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_binaries(root: Path = POSTGRESQL_LIB) -> PostgresBinaries:
    """The highest version under /usr/lib/postgresql having initdb, pg_ctl and
    postgres; PostgresUnavailable (with what to install) otherwise."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for version_dir in root.iterdir():
            key = _version_key(version_dir.name)
            bin_dir = version_dir / "bin"
            if key and all(
                os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")
            ):
                candidates.append((key, bin_dir))
    if not candidates:
        raise PostgresUnavailable(
            f"PostgreSQL server binaries not found ({root}/*/bin/initdb, pg_ctl, postgres):"
            " install Debian's postgresql package (scripts/test.sh does, as root)"
        )
    _, bin_dir = max(candidates)
    return PostgresBinaries(version=bin_dir.parent.name, bin_dir=bin_dir)


def postgres_available() -> str | None:
    """None when a private PostgreSQL can be run here, else the reason why not."""
    try:
        find_binaries()
    except PostgresUnavailable as missing:
        return str(missing)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root, and the {SYSTEM_USER!r} system user is missing"
        if shutil.which("runuser") is None:
            return "running as root, and runuser (util-linux) is missing"
    return None


def _runtime_base() -> Path:
    """A temporary directory the postgres user can search down to (TMPDIR may not be)."""
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")):
        path = candidate.resolve()
        if all(d.stat().st_mode & 0o001 for d in [path, *path.parents]):
            return path
    raise PostgresUnavailable("no temporary directory the postgres user can reach")


def _pick_port() -> int:
    """A port free on 127.0.0.1 now (bind port 0). Another process may take it
    before postgres binds it: start() then tries another one."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether pid runs. A zombie does not: in a container, PID 1 may never
    reap the postmaster we killed, and kill(pid, 0) would still succeed."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Fields after the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (the postmaster's backends and workers)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        os.kill(pid, sig)


class PostgresServer:
    """A throw-away PostgreSQL cluster: superuser ``postgres`` with a random
    password, SCRAM-SHA-256 over TCP (trust on its private Unix socket)."""

    def __init__(self, folder: Path, binaries: PostgresBinaries | None = None) -> None:
        self.folder = folder
        self.binaries = binaries or find_binaries()
        self.superuser_password = secrets.token_urlsafe(24)
        self.port: int | None = None  # chosen at the first start, then kept
        self._runtime: Path | None = None
        self._initialized = False
        self._as_root = os.geteuid() == 0

    # -- files ---------------------------------------------------------------

    @property
    def runtime(self) -> Path:
        """The directory holding data, socket and log (see the module's docstring)."""
        if self._runtime is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            runtime = Path(tempfile.mkdtemp(prefix="mss-pg-", dir=_runtime_base()))
            runtime.chmod(0o755)  # mkdtemp makes it 0700: the postgres user must search it
            if self._as_root:
                os.chown(runtime, pwd.getpwnam(SYSTEM_USER).pw_uid, -1)
            link = self.folder / "runtime"
            link.unlink(missing_ok=True)
            link.symlink_to(runtime)
            self._runtime = runtime
        return self._runtime

    @property
    def data_dir(self) -> Path:
        return self.runtime / "data"

    @property
    def socket_dir(self) -> Path:
        return self.runtime / "socket"

    @property
    def log_path(self) -> Path:
        return self.runtime / "postgresql.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- commands ------------------------------------------------------------

    def _command(self, args: list[str]) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SYSTEM_USER, "--", *args]
        return args

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a server command as the unprivileged user; RuntimeError on failure.

        cwd is the runtime directory: as the postgres user, the tests' working
        directory may not be reachable (initdb and postgres then complain).
        pg_ctl start sends the postmaster's output to the log file (-l), so
        no pipe of ours stays open and this returns once the server is up.
        """
        command = self._command(args)
        result = subprocess.run(
            command,
            cwd=self.runtime,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def _mkdir_owned(self, path: Path, mode: int) -> None:
        path.mkdir(mode=mode, exist_ok=True)
        path.chmod(mode)  # mkdir's mode goes through the umask
        if self._as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def initdb(self) -> None:
        """Create the cluster (once; start() calls it)."""
        if self._initialized:
            return
        self._mkdir_owned(self.data_dir, 0o700)  # postgres refuses a group/world-readable one
        self._mkdir_owned(self.socket_dir, 0o755)
        # The password goes through a file, never the command line (ps shows it);
        # it is removed as soon as initdb has read it.
        pwfile = self.runtime / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            os.chown(pwfile, pwd.getpwnam(SYSTEM_USER).pw_uid, -1)
        try:
            self._run(
                [
                    str(self.binaries.initdb),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    # TCP: SCRAM, so that the tests can check a wrong password
                    # is refused; the private socket: trust (nobody else's).
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    # C.UTF-8 exists everywhere (no locales package needed) and
                    # sorts the same on every machine.
                    "--locale=C.UTF-8",
                    # initdb's own fsyncs: the cluster is thrown away anyway.
                    "--no-sync",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._initialized = True

    def _options(self, port: int) -> str:
        settings = [
            ("listen_addresses", HOST),
            ("port", str(port)),
            ("unix_socket_directories", str(self.socket_dir)),
            # No fsync: much faster commits and checkpoints, and the data is
            # thrown away after the session. A killed postmaster (kill()) loses
            # nothing: the kernel's page cache still has what it wrote; only a
            # crash of the machine could corrupt the cluster.
            ("fsync", "off"),
            # Relays' pools, the tests' own connections, several tests' worth
            # of leftovers: more than the default 100.
            ("max_connections", "200"),
            ("unix_socket_permissions", "0777"),
        ]
        # pg_ctl hands -o to a shell: quote every value.
        return " ".join(f"-c {name}={shlex.quote(value)}" for name, value in settings)

    def _pg_ctl_start(self, port: int) -> None:
        self._run(
            [
                str(self.binaries.pg_ctl),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-o",
                self._options(port),
                "start",
            ],
            timeout=START_TIMEOUT + 10,
        )

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the server (initdb first, the first time); the same port and
        data as before when it was stopped or killed. A no-op when running."""
        if self.running:
            return
        self.initdb()
        self._remove_stale_pid_file()
        if self.port is not None:
            self._start_on(self.port)
            return
        # First start: the port found free may be taken before postgres binds
        # it (another test, another session): then try another one.
        for attempt in range(PORT_ATTEMPTS):
            port = _pick_port()
            try:
                self._start_on(port)
            except RuntimeError as error:
                if "could not bind" not in str(error) or attempt == PORT_ATTEMPTS - 1:
                    raise
                self._remove_stale_pid_file()
                continue
            self.port = port
            return

    def _start_on(self, port: int) -> None:
        """pg_ctl start; a failure's RuntimeError holds what the server logged."""
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._pg_ctl_start(port)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\nits log:\n{self.log_text()[log_size:]}") from None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl's mode: smart, fast, immediate); data, port
        and files are kept for start(). A no-op when it is not running."""
        if not self.running:
            self._remove_stale_pid_file()
            return
        self._run(
            [
                str(self.binaries.pg_ctl),
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(STOP_TIMEOUT),
                "stop",
            ],
            timeout=STOP_TIMEOUT + 10,
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop, then start again: same port, same data."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends follow.

        Each backend notices its postmaster's death and exits, closing its
        client's connection; one that does not within KILL_TIMEOUT (busy in a
        long query) is killed too. Returns once none is left: postgres refuses
        to start while a process of the old cluster still holds its shared
        memory. start() then runs crash recovery, on the same port.
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_TIMEOUT
        while any(_alive(child) for child in [pid, *children]):
            if time.monotonic() > deadline:
                for child in children:
                    _signal(child, signal.SIGKILL)
                deadline = time.monotonic() + KILL_TIMEOUT
            time.sleep(0.02)
        self._remove_stale_pid_file()

    def close(self) -> None:
        """Stop the server and remove its files, keeping a copy of its log in
        the folder (folder/postgresql.log)."""
        try:
            if self.running:
                try:
                    self.stop("fast")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self.kill()
        finally:
            if self._runtime is not None:
                with contextlib.suppress(OSError):
                    shutil.copyfile(self.log_path, self.folder / "postgresql.log")
                shutil.rmtree(self._runtime, ignore_errors=True)
                (self.folder / "runtime").unlink(missing_ok=True)
                self._runtime = None
                self._initialized = False

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid (its first line), if any."""
        if self._runtime is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    @property
    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def _remove_stale_pid_file(self) -> None:
        """Remove the lock files of a dead postmaster: postmaster.pid and the
        socket's .s.PGSQL.PORT.lock (with its socket). postgres itself only
        overrides them when kill(pid, 0) fails, and a killed postmaster may
        linger a while as a zombie (reaped late, or never, by the container's
        PID 1), or its pid be reused: start() would then refuse to run."""
        if self._runtime is None:
            return
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            return
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
            lock.with_suffix("").unlink(missing_ok=True)

    # -- SQL -----------------------------------------------------------------

    def _port(self) -> int:
        if self.port is None:
            raise RuntimeError("the PostgreSQL server was never started")
        return self.port

    def url(self, user: str, database: str, password: str | None = None) -> str:
        """postgresql://user[:password]@127.0.0.1:PORT/database (quoted)."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{HOST}:{self._port()}/{quote(database, safe='')}"

    def superuser_url(self, database: str = "postgres") -> str:
        return self.url(SUPERUSER, database, self.superuser_password)

    def sql(
        self, statement: Statement, database: str = "postgres", params: Any = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over TCP (autocommit: CREATE
        DATABASE cannot run in a transaction); its rows, [] when it has none."""
        with (
            psycopg.connect(
                self.superuser_url(database), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def create_role(self, name: str, password: str) -> None:
        """A login role (SCRAM-SHA-256 hash: password_encryption's default)."""
        self.sql(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                pgsql.Identifier(name), pgsql.Literal(password)
            )
        )

    def drop_role(self, name: str) -> None:
        self.sql(pgsql.SQL("DROP ROLE IF EXISTS {}").format(pgsql.Identifier(name)))

    def create_database(self, name: str, owner: str) -> None:
        self.sql(
            pgsql.SQL("CREATE DATABASE {} OWNER {}").format(
                pgsql.Identifier(name), pgsql.Identifier(owner)
            )
        )

    def drop_database(self, name: str) -> None:
        """Drop it even while clients (a relay's pool) are connected: WITH
        (FORCE) terminates their backends first (PostgreSQL 13+)."""
        statement = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        self.sql(statement.format(pgsql.Identifier(name)))

    def terminate_connections(self, database: str) -> int:
        """pg_terminate_backend every backend on database but our own: their
        clients see the connection killed (mid-transaction, if one was open).
        Returns how many were terminated."""
        rows = self.sql(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            params=(database,),
        )
        return int(rows[0][0])

    def backends(self, database: str) -> int:
        """How many client backends are connected to database (ours excluded)."""
        rows = self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            params=(database,),
        )
        return int(rows[0][0])


def unique_name(prefix: str = "t") -> str:
    """A fresh lower-case identifier: no quoting surprises in URLs or SQL."""
    return f"{prefix}_{secrets.token_hex(6)}"
