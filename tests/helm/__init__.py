"""Tools for the chart's tests: see tools.py."""
