"""The version of Live DMD, recorded in every checkpoint (`code_version`)."""

__version__ = "0.1.0"
