"""One local Prefect server for the machine, shared by every safeops command.

Without ``PREFECT_API_URL`` Prefect starts a throw-away server inside each process
(8-18 s here) and forgets every run when the command ends. Instead the CLI keeps one
``prefect server start`` running in the background, started on first use and found
by later commands through a state file and ``GET /api/health``:

    $SAFEOPS_HOME/server/          (default ~/.safeops/server)
        state.json   url, pid, port of the running server
        lock         flock: two commands starting at once make one server
        server.log   the server's output
        prefect/     its own PREFECT_HOME and SQLite database (prefect.db)

An operator who configured a Prefect API (``PREFECT_API_URL`` in the environment, a
Prefect profile, ``prefect.toml`` or ``.env``) sees no change: that API is used and no
local server is started. Standard library only: this runs before Prefect is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from safeops.core.errors import SafeopsError

# A fresh server is healthy in 5-18 s on this machine; a loaded one has taken minutes.
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
# Proxies are for the outside world: the local server is always reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def safeops_home() -> Path:
    """``SAFEOPS_HOME`` (tests and the bench point it at a temporary folder), else ~/.safeops."""
    configured = os.environ.get("SAFEOPS_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".safeops"


def server_dir() -> Path:
    return safeops_home() / "server"


def _private_dir(path: Path) -> Path:
    """A folder only its owner can enter: the server's database holds flow parameters,
    Secret blocks and the key that decrypts them, and state.json says which pid
    `safeops server stop` signals."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _private_open(path: Path, flags: int) -> int:
    return os.open(path, flags, 0o600)


def auth_string() -> str:
    """The local server's API credentials (``user:secret``, HTTP basic auth), made once and
    kept in a file only the owner can read: the server listens on 127.0.0.1, where every
    local user can reach it, so without them anyone on the machine could read its
    Secret blocks (a target's database URL) or answer an approval."""
    path = _private_dir(server_dir()) / "auth"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    value = f"safeops:{secrets.token_urlsafe(32)}"
    part = path.with_suffix(".part")
    fd = _private_open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
    part.replace(path)
    return value


def database_path() -> Path:
    """The local server's SQLite file (also read directly for Secret blocks, see preflight)."""
    return server_dir() / "prefect" / "prefect.db"


@dataclass(frozen=True)
class LocalServer:
    url: str  # the API URL, http://127.0.0.1:<port>/api
    pid: int
    port: int

    def describe(self) -> str:
        return f"{self.url} (pid {self.pid}, files in {server_dir()})"


# ---------------------------------------------------------------- the operator's own API


def configured_api_url() -> str | None:
    """The Prefect API an operator configured, wherever Prefect would read it from.

    In a process that already imported Prefect (the test harness, the demo) its current
    settings are the answer. Otherwise the sources Prefect reads, cheapest first: the
    environment, ``.env`` and ``prefect.toml`` in the working folder, the active profile."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
        return str(url) if url else None
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    for found in (_dotenv_api_url(), _prefect_toml_api_url(), _profile_api_url()):
        if found:
            return found
    return None


def _dotenv_api_url() -> str | None:
    try:
        lines = Path(".env").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.strip() == "PREFECT_API_URL":
            return value.strip().strip("'\"") or None
    return None


def _prefect_toml_api_url() -> str | None:
    for path, section in (
        (Path("prefect.toml"), ()),
        (Path("pyproject.toml"), ("tool", "prefect")),
    ):
        try:
            data: object = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        for key in (*section, "api"):
            data = data.get(key, {}) if isinstance(data, dict) else {}
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str) and url:
            return url
    return None


def _profile_api_url() -> str | None:
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml")
    try:
        data = tomllib.loads(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(active, {})
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None


# ---------------------------------------------------------------- finding the server


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """``GET <api>/health`` answers 200: the server is up and serving its API."""
    try:
        with _DIRECT.open(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _read_state() -> LocalServer | None:
    try:
        data = json.loads((server_dir() / "state.json").read_text(encoding="utf-8"))
        return LocalServer(url=str(data["url"]), pid=int(data["pid"]), port=int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(server: LocalServer) -> None:
    path = _private_dir(server_dir()) / "state.json"
    part = path.with_suffix(".part")
    fd = _private_open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"url": server.url, "pid": server.pid, "port": server.port}, handle)
    part.replace(path)


def _alive(server: LocalServer) -> bool:
    """The recorded pid still runs *our* server (a recycled pid belongs to someone else)."""
    try:
        os.kill(server.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        command = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: the pid answering is all we can know
    return b"server" in command and str(server.port).encode() in command


def running() -> LocalServer | None:
    """The local server, when it runs and answers its health check."""
    server = _read_state()
    if server is not None and healthy(server.url) and _alive(server):
        return server
    return None


def starting() -> LocalServer | None:
    """A recorded server whose process runs but does not answer yet (still booting)."""
    server = _read_state()
    if server is not None and _alive(server) and not healthy(server.url):
        return server
    return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One command at a time finds or starts the server (others wait, then reuse it)."""
    folder = _private_dir(server_dir())
    with os.fdopen(_private_open(folder / "lock", os.O_RDWR | os.O_CREAT), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _notice(text: str) -> None:
    print(f"safeops: {text}", file=sys.stderr, flush=True)


# A server this process started and has not yet seen healthy (see ready()).
_starting: tuple[LocalServer, subprocess.Popen[bytes]] | None = None


def ensure(notice: Callable[[str], None] = _notice, *, wait: bool = True) -> LocalServer:
    """The running local server, started (or restarted, if it died) when there is none.

    ``wait=False`` returns as soon as a new server is launched: the command imports
    Prefect and its flow (~3 s) while the server boots on the other core, then calls
    ready(). Other commands meanwhile find its pid alive and wait for its health."""
    server = running()
    if server is not None:
        return server
    with _locked():
        previous = _read_state()
        if previous is not None and _alive(previous):
            # Still starting (another command started it) or briefly busy: wait for it.
            if _wait_healthy(previous, None, STARTUP_TIMEOUT_S):
                return previous
            _terminate(previous)
        server = _start(previous, notice)
    if wait:
        ready()
    return server


def ready() -> None:
    """Wait until the server this process started answers (no-op when it started none)."""
    global _starting
    if _starting is None:
        return
    server, process = _starting
    _starting = None
    if not _wait_healthy(server, process, STARTUP_TIMEOUT_S):
        with _locked():
            _terminate(server)
            if _read_state() == server:
                (server_dir() / "state.json").unlink(missing_ok=True)
        raise SafeopsError(
            f"The local Prefect server did not start within {STARTUP_TIMEOUT_S:.0f} s "
            f"(see {server_dir() / 'server.log'})."
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(folder: Path) -> dict[str, str]:
    """The server's own PREFECT_HOME and database, whatever the caller's environment says."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PREFECT_API_URL",
            "PREFECT_API_DATABASE_CONNECTION_URL",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL",
            "PREFECT_PROFILE",
        )
    }
    env.update(
        {
            "PREFECT_HOME": str(folder / "prefect"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{folder / 'prefect' / 'prefect.db'}"
            ),
            "PREFECT_SERVER_API_AUTH_STRING": auth_string(),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    return env


def _start(previous: LocalServer | None, notice: Callable[[str], None]) -> LocalServer:
    folder = _private_dir(server_dir())
    _private_dir(folder / "prefect")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    if previous is None:
        notice(
            f"starting a local Prefect server at {url} for this and later commands "
            f"(files in {folder}; `safeops server stop` stops it; set PREFECT_API_URL to use "
            "your own)"
        )
    else:
        notice(
            f"the local Prefect server (pid {previous.pid}) is gone; starting a new one at {url}"
        )
    log_fd = _private_open(folder / "server.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(log_fd, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=server_environment(folder),
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; its own group for stop
            umask=0o077,  # its database and files: the owner's only
        )
    server = LocalServer(url=url, pid=process.pid, port=port)
    _write_state(server)
    global _starting
    _starting = (server, process)
    return server


def _wait_healthy(
    server: LocalServer, process: subprocess.Popen[bytes] | None, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(server.url, timeout_s=2.0):
            return True
        if process is not None and process.poll() is not None:
            return False
        if process is None and not _alive(server):
            return False
        time.sleep(0.2)
    return False


def _terminate(server: LocalServer) -> None:
    """SIGTERM the server's process group (the server stops on it), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _pid_exists(server.pid):
                return
            time.sleep(0.1)


def _pid_exists(pid: int) -> bool:
    try:
        # Our own child (started by this process) is reaped here, not left a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def stop() -> LocalServer | None:
    """Stop the local server; returns what was stopped (None: nothing was running)."""
    with _locked():
        server = _read_state()
        if server is None:
            return None
        alive = _alive(server)
        if alive:
            _terminate(server)
        (server_dir() / "state.json").unlink(missing_ok=True)
        return server if alive else None


def use_for_this_command(*, wait: bool = True) -> str:
    """Point this process at a Prefect API before Prefect is imported: the operator's own
    when configured, else the machine's local server (started when needed; with
    ``wait=False`` the caller calls ready() before talking to it)."""
    configured = configured_api_url()
    if configured:
        _require_listening(configured)
        return configured
    server = ensure(wait=wait)
    os.environ["PREFECT_API_URL"] = server.url
    os.environ["PREFECT_API_AUTH_STRING"] = auth_string()
    return server.url


def _require_listening(api_url: str) -> None:
    """The operator's Prefect API accepts connections, else one line naming it (Prefect's
    own error is a bare "Connection refused", easily taken for the database's). A TCP
    connect only: no TLS, no credentials, no endpoint that Prefect Cloud may not serve."""
    from urllib.parse import urlsplit

    from safeops.core.errors import SafeopsError

    parts = urlsplit(api_url)
    shown = f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    shown += parts.path
    if not parts.hostname:
        return  # not a URL we can check; Prefect will say what is wrong with it
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise SafeopsError(
            f"The Prefect API at {shown} (PREFECT_API_URL) cannot be reached "
            f"({exc.strerror or type(exc).__name__}); nothing was started."
        ) from None
