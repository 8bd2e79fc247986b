"""The one error type of the feature profile."""

from __future__ import annotations


class FeatureError(ValueError):
    """Input an extractor cannot use (wrong rate, shape, file, model): the message names the
    value and what to do about it."""


def missing_package(package: str, purpose: str) -> FeatureError:
    """The error for an optional feature library that is not installed."""
    return FeatureError(
        f"{purpose} needs the Python package {package!r}, which is not installed: "
        f"pip install 'live-dmd[live]' (or pip install {package})"
    )
