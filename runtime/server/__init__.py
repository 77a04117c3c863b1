"""The HTTP server of `rfc serve`: the native API (docs/native-api.md) and an OpenAI-compatible API over
one continuous-batching engine (Falcon on waitress)."""

from rfc.runtime.server.app import create_app
from rfc.runtime.server.config import LogConfig, ServeOptions, ServerConfig
from rfc.runtime.server.served_models import EngineHandle, ServedModel, load_served_model

__all__ = [
    "create_app",
    "EngineHandle",
    "LogConfig",
    "ServeOptions",
    "ServedModel",
    "ServerConfig",
    "load_served_model",
]
