"""Only what pyproject.toml cannot say: the native engine, compiled with cffi at install time.

Optional (``optional=True`` in its builder): without a C compiler the install
still succeeds, the proxy logs a warning and runs its pure-Python data path.
The benchmark harness and its C blaster are a distribution of their own, in bench/.
"""

from setuptools import setup

setup(cffi_modules=["ext/build.py:ffibuilder"])
