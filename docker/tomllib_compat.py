"""``tomllib`` for Python 3.10 (the Python of NVIDIA's Merlin 23.08 containers).

The project reads TOML with the standard library's ``tomllib`` (Python 3.11+). The container
images install this file as ``tomllib.py`` only when the interpreter has no ``tomllib``; it
re-exports ``tomli``, the package ``tomllib`` was made from (same API).
"""
from tomli import TOMLDecodeError, load, loads  # noqa: F401

__all__ = ["TOMLDecodeError", "load", "loads"]
