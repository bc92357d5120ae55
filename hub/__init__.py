"""Entry scripts run from a checkout: `python -m hub.push_model`, `python -m hub.push_dataset`, `python -m hub.convert`.

They only parse arguments; the logic lives in `modeling_vift.hub`, `modeling_vift.hub_datasets` and
`modeling_vift.convert`. This folder is not installed into site-packages.
"""
