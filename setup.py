"""Only what pyproject.toml cannot say: the native modules, compiled with cffi at install time.

Every ``ext/build*.py`` names one cffi module (``ffibuilder``): the RTP engine
(``build.py``) and the media-transport cores beside it. Each is optional
(``optional=True`` in its builder): without a C compiler, or without a library
one of them needs, the install still succeeds and the component that wanted it
says why and runs its pure-Python twin (or refuses the transport).
The benchmark harness and its C blaster are a distribution of their own, in bench/.
"""

from pathlib import Path

from setuptools import setup

setup(cffi_modules=[f"ext/{path.name}:ffibuilder" for path in sorted(Path("ext").glob("build*.py"))])
