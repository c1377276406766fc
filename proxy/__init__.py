"""drm-gateway: a dual-provider DRM license proxy gateway."""

__version__ = "0.1.0"
