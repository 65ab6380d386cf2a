"""redis_conn with real servers: the embedded default's lifecycle, password auth, and a real TLS server."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from services.core.queues import PROMPTS
from services.core.redis_conn import EmbeddedRedis, RedisUnavailableError, connect, redis_url_or_embedded
from services.core.redis_streams import RedisStreamQueue
from services.core.wire import PromptGroup
from services.process import free_loopback_port
from tests.redis_fixtures import SERVER_URL, unique_run_id

pytestmark = pytest.mark.integration


def test_embedded_server_starts_and_stops_with_its_owner() -> None:
    with redis_url_or_embedded(None) as url:
        assert url.startswith("unix://")
        client = connect(url)
        assert client.ping()
        info = client.info("server")
        pid, socket_path = int(info["process_id"]), Path(url.removeprefix("unix://"))
        assert psutil.pid_exists(pid) and socket_path.exists()
        client.close()
    assert not socket_path.parent.exists()  # its temp dir is gone
    assert not psutil.pid_exists(pid)  # stopped and reaped


def test_a_relative_data_dir_works_and_keeps_its_files_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rlvr run's default is the relative runs/<id>/redis; redis-server changes into --dir before opening its files
    monkeypatch.chdir(tmp_path)
    with EmbeddedRedis(Path("runs") / "r1" / "redis", persist=True) as server:
        client = connect(server.url)
        assert client.set("k", "v")
        client.close()
    assert (tmp_path / "runs" / "r1" / "redis" / "redis.log").exists()
    assert any((tmp_path / "runs" / "r1" / "redis").glob("appendonly*"))


def test_given_url_passes_through_without_starting_anything() -> None:
    with redis_url_or_embedded(SERVER_URL) as url:
        assert url == SERVER_URL


def test_embedded_server_with_password() -> None:
    with EmbeddedRedis(password="s3cr:t@x") as server:
        assert connect(server.url).ping()
        wrong = server.url.replace("s3cr", "nope")
        with pytest.raises(RedisUnavailableError, match=r"unix://:\*\*\*@") as info:
            connect(wrong)
        assert "nope" not in str(info.value)
        with pytest.raises(RedisUnavailableError):
            connect(f"unix://{server.socket_path}")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A real redis-server with TLS and a password (self-signed cert); skipped without a TLS-capable binary."""
    server_bin, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not server_bin or not openssl:
        pytest.skip("needs redis-server and openssl on PATH for a real TLS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_loopback_port()
    proc = subprocess.Popen(
        [server_bin, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--requirepass", "s3cret", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
    )  # fmt: skip
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.skip(f"redis-server has no TLS support here: {(tmp_path / 'redis.log').read_text()[-300:]}")
            try:
                connect(url, socket_timeout_s=2).close()
                break
            except RedisUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_queue_over_tls_with_password(tls_redis: str) -> None:
    client = connect(tls_redis)
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    queue = RedisStreamQueue(client, PROMPTS, unique_run_id())
    message = PromptGroup(group_id="g", step=1, prompt="q", label="a", data_source="math", n=2)
    queue.publish(message)
    assert [d.message for d in queue.read("a")] == [message]
    with pytest.raises(RedisUnavailableError, match=r"rediss://:\*\*\*@127\.0\.0\.1"):
        connect(tls_redis.replace("s3cret", "wrong"))


def test_embedded_server_that_cannot_start_raises_and_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.core.redis_conn.bundled_redis_server", lambda: shutil.which("false") or "/bin/false")
    server = EmbeddedRedis()
    with pytest.raises(RedisUnavailableError, match="embedded redis-server exited with 1"):
        server.start()
    assert not server.data_dir.exists() and server.pid is None


def test_embedded_server_dies_with_its_owner(tmp_path: Path) -> None:
    """An owner killed with SIGKILL (no clean-up runs) leaves no orphaned redis-server behind."""
    script = (
        "import sys, time\n"
        "from services.core.redis_conn import EmbeddedRedis\n"
        f"server = EmbeddedRedis({str(tmp_path)!r}).start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        server_pid = int(owner.stdout.readline())
        assert psutil.pid_exists(server_pid)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(server_pid).wait(timeout=10)
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
