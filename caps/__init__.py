"""caps.yaml: schema, loader, CEL compilation, static secret-ref analysis, matching, evaluation.

Pure: no network, no mitmproxy, no broker; the only I/O is reading the caps file.
"""

from __future__ import annotations

from capgate.caps.decide import Verdict, decide, decide_tunnel
from capgate.caps.errors import BodyEditError, CapsError, Problem
from capgate.caps.hosts import HostPattern, default_port, normalize_host, parse_authority
from capgate.caps.http import Destination, path_without_query
from capgate.caps.loader import load_caps, parse_caps
from capgate.caps.matcher import Matcher
from capgate.caps.model import (
    AUTH_PROVIDERS,
    AuthTransform,
    BodyEdit,
    BodyTransform,
    Capability,
    CapsConfig,
    Edit,
    HeaderEdit,
    HeaderTransform,
    PathEdit,
    PathTransform,
    QueryEdit,
    QueryTransform,
    RequestView,
    Role,
    Transform,
    TransformFailure,
    WorkspaceView,
)
from capgate.caps.transforms import apply_body_edit, evaluate

__all__ = [
    "AUTH_PROVIDERS",
    "AuthTransform",
    "BodyEdit",
    "BodyEditError",
    "BodyTransform",
    "Capability",
    "CapsConfig",
    "CapsError",
    "Destination",
    "Edit",
    "HeaderEdit",
    "HeaderTransform",
    "HostPattern",
    "Matcher",
    "PathEdit",
    "PathTransform",
    "Problem",
    "QueryEdit",
    "QueryTransform",
    "RequestView",
    "Role",
    "Transform",
    "TransformFailure",
    "Verdict",
    "WorkspaceView",
    "apply_body_edit",
    "decide",
    "decide_tunnel",
    "default_port",
    "evaluate",
    "load_caps",
    "normalize_host",
    "parse_authority",
    "parse_caps",
    "path_without_query",
]
