"""Deliberately broken copies of pure-core functions, for ``tests/system/test_crosshair.py``.

Not tests (pytest collects only ``test_*.py``): CrossHair is pointed at
:mod:`tests.crosshair_mutants.broken_core` and must find a counterexample to
the real functions' contracts in every function there.
"""
