"""Training recipes for ViFT (run from a checkout: `python -m recipes.<script> --config recipes/<config>.yaml`)."""
