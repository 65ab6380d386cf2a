"""Suite-wide fixtures: only the Redis ones (real server + embedded), from tests/integration/redis_fixtures.py."""

pytest_plugins = ["tests.integration.redis_fixtures"]
