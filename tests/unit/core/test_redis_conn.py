"""redis_conn without a server: URL redaction, TLS/password client construction, unreachable servers."""

from __future__ import annotations

import socket

import pytest
import redis

from services.core.redis_conn import RedisUnavailableError, connect, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://alice:s3cret@redis.example:6380/1", "rediss://alice:***@redis.example:6380/1"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("unix://:s3cret@/tmp/redis.sock", "unix://:***@/tmp/redis.sock"),
    ],
)
def test_redact_url_hides_passwords(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_rediss_url_builds_a_tls_client_with_password() -> None:
    client = redis.Redis.from_url(
        "rediss://alice:s3cret@redis.example:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"
    )
    kwargs = client.get_connection_kwargs()
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 2)
    assert (kwargs["username"], kwargs["password"], kwargs["ssl_ca_certs"]) == ("alice", "s3cret", "/ca.pem")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_url_raises_with_the_password_redacted() -> None:
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    with pytest.raises(RedisUnavailableError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1") as info:
        connect(url, socket_timeout_s=1.0)
    assert "s3cret" not in str(info.value)
