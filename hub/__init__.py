"""Entry scripts run from a checkout: `python -m hub.push_model`, `python -m hub.push_dataset`, `python -m hub.convert_llava`.

They only parse arguments; the logic lives in `modeling_vift.hub`, `modeling_vift.publishing.dataset` and
`modeling_vift.conversion`. This folder is not installed into site-packages.
"""
