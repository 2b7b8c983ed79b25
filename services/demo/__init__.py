"""Demo and simulation: the demo model server, the red team, benign client simulators, a private Redis for
the demo and the tests, and ``modelcustody demo`` itself.

Only the demo, the tests and the benchmarks import this package; no production component does (an
import-linter contract in ``pyproject.toml`` enforces it).
"""
