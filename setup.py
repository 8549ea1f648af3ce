"""The one part of the build pyproject.toml cannot declare yet: the walk's listing and stat loops in C
(server/_dirstat.c says why they are not Python)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("livedm.server._dirstat", ["server/_dirstat.c"], extra_compile_args=["-O2", "-Wall"])])
