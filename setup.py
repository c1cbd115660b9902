"""Only what pyproject.toml cannot say: the cffi extensions, compiled at install time.

Both are optional (``optional=True`` in their builders): without a C compiler
the install still succeeds, the proxy logs a warning and runs its pure-Python
data path, and ``msm bench`` says it cannot measure the C limit.
"""

from setuptools import setup

setup(cffi_modules=["ext/build.py:ffibuilder", "bench/build.py:ffibuilder"])
