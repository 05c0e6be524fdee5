"""A package, so that its conftest is ``runtime.conftest``.

The host suite's ``from conftest import ...`` (tests/*.py) keeps meaning tests/conftest.py.
"""
