"""Metrics (every `drm_gateway_*` series, defined in one module), logs and the access record.

Imported by every other package; imports only the vocabulary below it (`proxy.domain`,
`proxy.errors`, format names), so any module can count and log without an import cycle.
"""
