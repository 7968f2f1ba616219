"""The one C extension (agent/pricing/_route.c: routing's cold path over a deck's columns); the rest of the
package is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("agent.pricing._route", ["agent/pricing/_route.c"], extra_compile_args=["-O2"])])
