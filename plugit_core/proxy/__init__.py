"""The PlugIt proxy: the host site that mounts services and renders their pages."""

from .app import PlugItMiddleware, ProxyApp, ProxyRequest
from .pipeline import PageRequest, ServiceError, ServiceReply, UpstreamRequest
from .routes import Route

__all__ = [
    "PageRequest",
    "PlugItMiddleware",
    "ProxyApp",
    "ProxyRequest",
    "Route",
    "ServiceError",
    "ServiceReply",
    "UpstreamRequest",
]
