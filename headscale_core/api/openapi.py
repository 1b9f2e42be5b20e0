"""The OpenAPI 3.1 document of ``/api/v1``, built from the endpoint table the routes come from."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from headscale_core.api.base import Endpoint

_STR = {"type": "string"}
_ID = {"type": "string", "format": "uint64"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STRS = {"type": "array", "items": _STR}
_BOOL = {"type": "boolean"}

SCHEMAS: dict[str, Any] = {
    "User": {"type": "object", "properties": {
        "id": _ID, "name": _STR, "createdAt": _TIME, "displayName": _STR, "email": _STR,
        "providerId": _STR, "provider": _STR, "profilePicUrl": _STR}},
    "PreAuthKey": {"type": "object", "properties": {
        "user": {"oneOf": [{"$ref": "#/components/schemas/User"}, {"type": "null"}]}, "id": _ID,
        "key": _STR, "reusable": _BOOL, "ephemeral": _BOOL, "used": _BOOL, "expiration": _TIME,
        "createdAt": _TIME, "aclTags": _STRS}},
    "ApiKey": {"type": "object", "properties": {
        "id": _ID, "prefix": _STR, "expiration": _TIME, "createdAt": _TIME, "lastSeen": _TIME,
        "scope": {"type": "string", "enum": ["admin", "read"]}}},
    "Node": {"type": "object", "properties": {
        "id": _ID, "machineKey": _STR, "nodeKey": _STR, "discoKey": _STR, "ipAddresses": _STRS, "name": _STR,
        "user": {"$ref": "#/components/schemas/User"}, "lastSeen": _TIME, "expiry": _TIME,
        "preAuthKey": {"oneOf": [{"$ref": "#/components/schemas/PreAuthKey"}, {"type": "null"}]},
        "createdAt": _TIME,
        "registerMethod": {"type": "string", "enum": ["REGISTER_METHOD_UNSPECIFIED", "REGISTER_METHOD_AUTH_KEY",
                                                      "REGISTER_METHOD_CLI", "REGISTER_METHOD_OIDC"]},
        "givenName": _STR, "online": _BOOL, "approvedRoutes": _STRS, "availableRoutes": _STRS,
        "subnetRoutes": _STRS, "tags": _STRS}},
    "AuditEvent": {"type": "object", "properties": {
        "time": _TIME, "kind": {"type": "string", "description": "dotted, e.g. node.register, login.failed"},
        "actor": {"type": "string", "description": "who: api:<key prefix>, local, node:<id>, system..."},
        "subject": _STR, "source": {"type": "string", "description": "the client's address, when there was one"},
        "details": {"type": "object"}}},
    "Error": {"type": "object", "required": ["code", "message", "details"], "properties": {
        "code": {"type": "integer", "description": "gRPC status code"}, "message": _STR,
        "details": {"type": "array", "items": {"type": "object"}}}},
}


def _schema(kind: str) -> dict[str, Any]:
    if kind.endswith("[]"):
        return {"type": "array", "items": _schema(kind[:-2])}
    if kind == "date-time":
        return dict(_TIME)
    if kind in ("string", "boolean", "integer"):
        return {"type": kind}
    return {"$ref": f"#/components/schemas/{kind}"}


def _object(fields: dict[str, str]) -> dict[str, Any]:
    return {"type": "object", "properties": {name: _schema(kind) for name, kind in fields.items()}}


def _operation(ep: Endpoint) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": _STR}
              for name in re.findall(r"\{(\w+)\}", ep.path)]
    params += [{"name": name, "in": "query", "required": False, "schema": _STR} for name in ep.query]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op: dict[str, Any] = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "responses": {
            "200": {"description": "OK", "content": {ep.media_type: {"schema": _object(ep.response)}
                                                      if ep.media_type == "application/json" else {"type": "string"}}},
            "400": {"description": "Invalid request", **error},
            "401": {"description": "Missing or invalid API key (text/plain `Unauthorized`)"},
            "403": {"description": "The API key's scope does not allow this", **error},
            "404": {"description": "Not found", **error},
            "409": {"description": "Conflicts with existing state", **error},
        },
    }
    if params:
        op["parameters"] = params
    if ep.body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": _object(ep.body)}}}
    if ep.public:
        op["security"] = []
    return op


def openapi_document(endpoints: Iterable[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.1.0",
        "info": {"title": "headscale-core management API", "version": version,
                 "description": "Wire-compatible with Headscale 0.29's grpc-gateway /api/v1."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": SCHEMAS},
        "paths": paths,
    }
