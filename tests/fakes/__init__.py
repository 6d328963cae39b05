"""Test fakes. ``model_server`` is a scriptable fake of the model APIs the agent CLIs call."""

from tests.fakes.model_server import FakeModelServer
from tests.fakes.turns import (
    Hang,
    HttpError,
    RecordedRequest,
    Text,
    ToolCall,
    Turn,
    Usage,
    auth_error,
    rate_limited,
    server_error,
)

__all__ = [
    "FakeModelServer",
    "Hang",
    "HttpError",
    "RecordedRequest",
    "Text",
    "ToolCall",
    "Turn",
    "Usage",
    "auth_error",
    "rate_limited",
    "server_error",
]
