"""Development tooling: the demo (config, player page, media recipe) and the emulated providers.

Never imported by `drm-gateway serve`; may import anything in the package.
"""
