"""Suite-wide fixtures: the Redis ones (real server + embedded, unique runs, key cleanup), tests/redis_fixtures.py;
the shrunk tiny world the slow tests share, tests/world_fixtures.py."""

pytest_plugins = ["tests.redis_fixtures", "tests.world_fixtures"]
