"""Only what pyproject.toml cannot say: the C blaster, compiled with cffi at install time.

Optional (``optional=True`` in its builder): without a C compiler the install
still succeeds and ``msm bench`` says it cannot measure the machine's limit.
"""

from setuptools import setup

setup(cffi_modules=["build_blast.py:ffibuilder"])
