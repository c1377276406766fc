"""Metrics (every `drm_gateway_*` series, defined in one module) and structured logs.

Imported by every other package; imports none of them.
"""
