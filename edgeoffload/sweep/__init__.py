"""Sweeps: many simulations (scenario files x parameter overrides x policies x seeds) run as
cells on Dask distributed, each keyed by a hash of its inputs, so a sweep resumes, extends,
and gives the same bytes wherever it ran.

    edgeoffload sweep experiments/sweeps/policy_comparison.yaml --out results/policy_comparison

Modules: spec (the YAML grid, its validation and cells), cells (running one cell, the
per-cell store), engine (Dask or this process), report (table, report.md, plots), cli.
"""

CELLS_FOLDER = "cells"   # OUT/cells/<key>.json: one finished cell each (results.csv holds the same rows)
