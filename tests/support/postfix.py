"""A real, private Postfix instance on loopback, for end-to-end tests of the milter.

Each instance has its own config directory (main.cf + master.cf) and log file
under the test's work directory (WORKDIR/postfix/etc, WORKDIR/postfix/maillog),
and its own queue and data directories in /tmp/mss-postfix-* (see
``PostfixInstance.runtime`` for why), removed by ``stop()``. Every command is
run as ``postfix -c DIR`` with MAIL_CONFIG=DIR: /etc/postfix is only read
(postfix-files, dynamicmaps.cf), never written, and the system instance (if
any) is neither started nor stopped. It listens on 127.0.0.1 only.

Postfix is started with ``postfix -c DIR start-fg``: master(8) then runs in
the foreground of our child process, so a master that dies during start-up
(bad setting, port taken) is seen at once. (start-fg refuses to run if the
system main.cf sets multi_instance_directories.) It is stopped by SIGTERM to
master, which signals its process group, then a wait until none is left.

Usage::

    with PostfixInstance(tmp, smtp_port=free_port(), relay_port=up.port,
                         milter="inet:127.0.0.1:8890") as mta:
        smtplib.SMTP("127.0.0.1", mta.port) ...
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.processes import wait_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PROC_NET_TCP = Path("/proc/net/tcp")
TCP_LISTEN = "0A"  # state column of /proc/net/tcp

# master.cf: only what relaying through a milter needs. chroot is "n"
# everywhere: a chroot would need copies of /etc/hosts, resolv.conf, the
# libraries... inside each private queue directory. The postlog service is
# required as soon as maillog_file is set (postfix refuses to start without it).
# Columns: service type private unpriv chroot wakeup maxproc command.
MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 1 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def _daemon_directory() -> str:
    """Where master(8) and the daemons are (Debian: /usr/lib/postfix/sbin)."""
    try:
        out = subprocess.run(
            [POSTCONF, "-dh", "daemon_directory"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "/usr/lib/postfix/sbin"
    return out.stdout.strip() or "/usr/lib/postfix/sbin"


def postfix_available() -> str | None:
    """None when a private Postfix can be run here, else the reason why not."""
    if not (os.path.isfile(POSTFIX) and os.access(POSTFIX, os.X_OK)):
        return f"postfix not installed ({POSTFIX} missing)"
    if not os.access(POSTCONF, os.X_OK):
        return f"postconf not installed ({POSTCONF} missing)"
    master = Path(_daemon_directory()) / "master"
    if not os.access(master, os.X_OK):
        return f"postfix master daemon missing ({master})"
    # master(8) must start as root: it binds, then each daemon drops to mail_owner.
    if os.geteuid() != 0:
        return "a private postfix instance needs root (master(8) runs as root)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError as missing:
        return f"postfix user or postdrop group missing: {missing}"
    return None


class PostfixInstance:
    """A throw-away Postfix relaying everything from 127.0.0.1 to relay_port."""

    def __init__(
        self,
        workdir: Path,
        *,
        smtp_port: int,
        relay_port: int,
        milter: str | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.dir = workdir / "postfix"
        self.config_dir = self.dir / "etc"
        self.log_path = self.dir / "maillog"
        self.port = smtp_port
        self.relay_port = relay_port
        self.milter = milter
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._master_pid: int | None = None
        self._runtime: Path | None = None

    # -- directories ---------------------------------------------------------

    @property
    def runtime(self) -> Path:
        """Where queue_directory and data_directory are: not under workdir.

        The daemons reach them as the postfix user, through their absolute
        path, so every parent directory must be searchable by that user.
        pytest's basetemp (/tmp/pytest-of-root) is 0700, and every pytest
        session that starts resets it to 0700: a master started meanwhile
        fails with "open lock file .../master.lock: Permission denied". So
        they live in a directory of their own under /tmp (linked from
        workdir/postfix/runtime), removed by stop(). Config and log stay
        under workdir: only root reads and writes them.
        """
        if self._runtime is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            runtime = Path(tempfile.mkdtemp(prefix="mss-postfix-", dir=_runtime_base()))
            # "postfix check" wants the queue root-owned, not group/world writable.
            runtime.chmod(0o755)
            link = self.dir / "runtime"
            link.unlink(missing_ok=True)
            link.symlink_to(runtime)
            self._runtime = runtime
        return self._runtime

    @property
    def queue_dir(self) -> Path:
        return self.runtime / "spool"

    @property
    def data_dir(self) -> Path:
        return self.runtime / "data"

    # -- configuration -------------------------------------------------------

    def settings(self) -> dict[str, str]:
        """main.cf, as a dict: the defaults of this harness, then ``extra``."""
        settings = {
            # 3.6 is the newest level 3.7 knows: no "using backwards-compatible
            # default setting" warnings in the log.
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # Logging to a file needs the postlog service (master.cf) and a
            # file under one of maillog_file_prefixes (default: /var,
            # /dev/stdout), hence the prefix.
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            "syslog_name": f"postfix-test-{self.port}",
            "myhostname": "mx.ch-exemple.mssante.fr",
            "mydomain": "ch-exemple.mssante.fr",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            # Nothing is local: every recipient is relayed to relayhost.
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "mynetworks": "127.0.0.0/8",
            "mynetworks_style": "host",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            # Above the relay's own 20/60 MB rules: those must be what decides.
            "message_size_limit": "83886080",
            "mailbox_size_limit": "0",
            # No DNS in loopback tests: no reverse lookup of 127.0.0.1 (the
            # client is logged as unknown[127.0.0.1]); the brackets of
            # relayhost already skip the MX lookup.
            "smtpd_peername_lookup": "no",
            "smtp_connect_timeout": "2s",
            # Prompt delivery and prompt retries: relayed mail is handed to the
            # upstream at once (qmgr is woken by cleanup); a deferred message
            # is retried within seconds, not the production 5 minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            # Don't slow down senders while qmgr catches up (tests send bursts).
            "in_flow_delay": "0s",
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": "",
        }
        if self.milter:
            settings |= {
                "milter_default_action": "tempfail",
                "milter_protocol": "6",
                "milter_connect_timeout": "5s",
                "milter_command_timeout": "30s",
                "milter_content_timeout": "60s",
            }
        return settings | self.extra

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # queue_directory must exist before "postfix check" (postfix-script
        # cd's into it); check then creates its subdirectories and
        # data_directory with the owners of postfix-files (postfix, postdrop).
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        main = "".join(f"{key} = {value}\n" for key, value in self.settings().items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(smtp_port=self.port))
        # Postfix re-reads a main.cf modified within the last second, in
        # 300 ms steps, until it is older than that (it may be "being
        # edited"): every command would pay ~2.5 s. Age the files instead.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    # -- life cycle ------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MAIL_CONFIG": str(self.config_dir)}

    def command(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c DIR ARGS`` (check, status, flush...) on this instance."""
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=timeout,
        )

    def start(self) -> None:
        reason = postfix_available()
        if reason:
            raise RuntimeError(reason)
        self.write_config()
        out = (self.dir / "start-fg.out").open("ab")
        with out:
            # start-fg runs "postfix check" (creates the missing queue
            # directories with the right owners), then master in the
            # foreground: its life is our child's life.
            self.proc = subprocess.Popen(
                [POSTFIX, "-c", str(self.config_dir), "start-fg"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        try:
            self.wait_ready()
        except RuntimeError as error:
            details = self.startup_output() + self.log_text()
            self.stop()
            raise RuntimeError(f"postfix did not start: {error}\n{details}") from error
        self._master_pid = self.master_pid()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Readiness, not timing: return once master(8) listens on the port.

        Probing with a TCP connection (wait_port) would make smtpd open a
        session, and connect to the milter, for nothing: a milter under test
        would see a spurious connection and the log a "lost connection after
        CONNECT". The kernel's socket table tells without connecting; where
        it cannot be read, fall back to wait_port.
        """
        if self.proc is None:
            raise RuntimeError("postfix is not started")
        if not PROC_NET_TCP.exists():
            wait_port(self.port, self.proc, timeout=timeout)
            return
        deadline = time.monotonic() + timeout
        while not self._master_listens():
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix exited with {self.proc.returncode} before listening")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{self.port} after {timeout}s")
            time.sleep(0.02)

    def _master_listens(self) -> bool:
        # The listening socket must be master's own: a socket of someone else
        # on the port would look ready while master dies on "bind: Address
        # already in use".
        pid = self.master_pid()
        return pid is not None and bool(_listening_inodes(self.port) & _socket_inodes(pid))

    def master_pid(self) -> int | None:
        if self._runtime is None:
            return None
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[int]:
        """Every process of this instance: master(8) is a session leader."""
        sid = self._master_pid or self.master_pid()
        if sid is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                # Fields after "(comm)": state, ppid, pgrp, session.
                state, _, _, session = stat[stat.rindex(")") + 2 :].split()[:4]
            except (OSError, ValueError):  # gone meanwhile
                continue
            # A zombie is dead already; orphans are reaped by PID 1 whenever
            # it likes (in some containers, a second later).
            if int(session) == sid and state != "Z":
                pids.append(int(entry.name))
        return pids

    def stop(self, *, keep_queue: bool = False) -> None:
        """Stop master and every daemon; return once none of them is left.

        The queue and data directories are then removed, unless keep_queue
        (to start this instance again on the same queue). Idempotent.
        """
        pid = self._master_pid or self.master_pid()
        if pid is not None and self.processes():
            # master(8) on SIGTERM signals its whole process group then exits;
            # "postfix stop" does the same, but polls with a sleep 1.
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid is not None and self.processes():
            _signal(-pid, signal.SIGKILL)  # what "postfix stop" does after 5s
            while self.processes() and time.monotonic() < deadline + STOP_TIMEOUT:
                time.sleep(0.02)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        left = self.processes()
        if left:
            raise RuntimeError(f"postfix processes left after stop: {left}")
        self._master_pid = None
        if self._runtime is not None and not keep_queue:
            shutil.rmtree(self._runtime, ignore_errors=True)
            (self.dir / "runtime").unlink(missing_ok=True)
            self._runtime = None

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------

    def startup_output(self) -> str:
        path = self.dir / "start-fg.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queued(self) -> list[Path]:
        """Queue files still in this instance (accepted, not yet delivered)."""
        if self._runtime is None:
            return []
        queues = ("maildrop", "incoming", "active", "deferred", "hold")
        return [p for q in queues for p in (self.queue_dir / q).rglob("*") if p.is_file()]

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str] | None:
        """postlogd writes asynchronously: poll the log until pattern appears."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log_text())
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:port, from /proc/net/tcp."""
    # Addresses are the hex of the address as a native-endian 32-bit word.
    (word,) = struct.unpack("=I", socket.inet_aton("127.0.0.1"))
    local = f"{word:08X}:{port:04X}"
    with PROC_NET_TCP.open() as table:
        next(table)  # header
        rows = [line.split() for line in table]
    return {row[9] for row in rows if row[1] == local and row[3] == TCP_LISTEN}


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open ("socket:[12345]" links)."""
    inodes = set()
    with contextlib.suppress(OSError):  # not (or no longer) there
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _runtime_base() -> Path:
    """A temporary directory the postfix user can search down to (TMPDIR may not be)."""
    for candidate in (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")):
        path = candidate.resolve()
        if all(d.stat().st_mode & 0o001 for d in [path, *path.parents]):
            return path
    raise RuntimeError("no temporary directory the postfix user can reach")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        os.kill(pid, sig)
