"""Demos run from a checkout: `python -m demo.quickstart` (set-up check: build, save, reload as remote code)."""
