"""The API's request models (pydantic: validation and JSON Schema in one) and its OpenAPI document."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from callback_queue.callbacks import State
from callback_queue.users import Role

StateName = Literal[tuple(s.value for s in State) + ("open",)]  # type: ignore[valid-type]
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
E164 = Annotated[str, Field(pattern=E164_RE.pattern, description="E.164, e.g. +8613812345678")]
MAX_ID = 2**63 - 1
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
_EARLIEST, _LATEST = date(2000, 1, 1), date(2100, 1, 1)


def _clean(value: Any) -> Any:
    """Text the database can store: no NUL characters, no lone surrogates."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
    elif isinstance(value, list):
        for v in value:
            _clean(v)
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _clean(v)


class ListQuery(_In):
    state: list[StateName] | None = Field(default=None, description="only these states; 'open' = all open states")
    due: bool = Field(default=False, description="only callbacks that can be claimed now")
    kind: Literal["recall", "followup"] | None = None
    number: E164 | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)


class FollowupQuery(_In):
    state: list[StateName] | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)


def _json_int(v: Any) -> Any:
    # JSON Schema counts 38.0 as an integer; strict validation would not
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


JsonInt = Annotated[int, BeforeValidator(_json_int)]


class _Body(_In):
    """JSON bodies are validated strictly (no true for 1, no "3" for 3)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ClaimBody(_Body):
    count: JsonInt = Field(default=1, ge=1, le=50, description="how many due callbacks to claim")


class CloseBody(_Body):
    outcome: Literal["reached", "no-answer", "busy", "wrong-number", "declined"]
    note: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    force: bool = Field(default=False, description="admins: close a callback someone else holds")


class ReleaseBody(_Body):
    note: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    force: bool = Field(default=False, description="admins: release a callback someone else holds")


class CancelBody(_Body):
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class FollowupBody(_Body):
    number: E164
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
                            description="the closed request (work order) whose handling is to be rated")
    due_at: AwareDatetime | None = Field(default=None, description="not before (default: now)")
    priority: JsonInt = Field(default=0, ge=-100, le=100)


class DncBody(_Body):
    number: E164
    reason: str | None = Field(default=None, max_length=500, pattern=NO_NUL)


class ReportQuery(_In):
    since: date | None = Field(default=None, description="first local day (default: 30 days ago)")
    until: date | None = Field(default=None, description="last local day, inclusive (default: today)")
    by: Literal["day", "week"] = "day"
    format: Literal["json", "csv"] = "json"

    @field_validator("since", "until")
    @classmethod
    def _range(cls, v: date | None) -> date | None:
        if v is not None and not (_EARLIEST <= v < _LATEST):
            raise ValueError("must be between 2000-01-01 and 2099-12-31")
        return v


class HeatmapQuery(_In):
    weeks: int = Field(default=4, ge=1, le=52, description="how many weeks of attempts, up to today")


# -- response shapes ----------------------------------------------------------------------
_TS = {"type": ["string", "null"]}
CALLBACK = {
    "type": "object",
    "required": ["id", "kind", "number", "state", "due_at", "failures"],
    "properties": {
        "id": {"type": "integer"}, "kind": {"type": "string"},
        "number": {"type": "string", "description": "masked unless you hold the claim (or are an admin)"},
        "state": {"type": "string", "enum": [s.value for s in State]},
        "priority": {"type": "integer"}, "failures": {"type": "integer"}, "dial_attempts": {"type": "integer"},
        "due_at": {"type": "string"}, "triggered_at": {"type": "string"}, "lease_until": _TS,
        "claimed_by": {"type": ["string", "null"]}, "outcome": {"type": ["string", "null"]},
        "request_id": {"type": ["string", "null"]},
    },
}
PAGE = {"type": "object", "required": ["items", "limit", "offset"],
        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Callback"}},
                       "limit": {"type": "integer"}, "offset": {"type": "integer"},
                       "next_offset": {"type": ["integer", "null"]}}}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "code", "message"],
    "properties": {"status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "array", "items": {"type": "object"}}}}}}
OBJECT = {"type": "object"}
REF_CALLBACK = {"$ref": "#/components/schemas/Callback"}
REF_PAGE = {"$ref": "#/components/schemas/CallbackPage"}


@dataclass(frozen=True)
class Op:
    method: str
    path: str                       # Starlette path, e.g. /api/callbacks/{callback_id:int}
    handler: Any
    summary: str
    role: Role = Role.OPERATOR
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: dict[str, Any] | None = None
    status: int = 200
    csv: bool = False               # may also answer text/csv
    errors: tuple[int, ...] = (400, 404, 409, 422)


_PARAM = re.compile(r"{(\w+)(?::(\w+))?}")
_PATH_SCHEMAS = {"number": {"type": "string", "pattern": E164_RE.pattern}}


def openapi(ops: list[Op], title: str = "callbackd", version: str = "0") -> dict[str, Any]:
    components: dict[str, Any] = {"Callback": CALLBACK, "CallbackPage": PAGE, "Error": ERROR}
    paths: dict[str, Any] = {}

    def schema_of(model: type[BaseModel]) -> dict[str, Any]:
        s = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(s.pop("$defs", {}))
        return s

    for op in ops:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", op.path)
        params: list[dict[str, Any]] = [
            {"name": m.group(1), "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID} if m.group(2) == "int"
             else _PATH_SCHEMAS.get(m.group(1), {"type": "string"})}
            for m in _PARAM.finditer(op.path)
        ]
        if op.query is not None:
            s = schema_of(op.query)
            for name, prop in s.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in s.get("required", []),
                               "schema": prop, **({"description": prop["description"]}
                                                  if "description" in prop else {})})
        ok_content: dict[str, Any] = {"application/json": {"schema": op.response or OBJECT}}
        if op.csv:
            ok_content["text/csv"] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {str(op.status): {"description": "OK", "content": ok_content}}
        err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        responses["401"] = {"description": "no or bad bearer token", **err}
        if op.role is Role.ADMIN:
            responses["403"] = {"description": "admins only", **err}
        for code in op.errors:
            responses[str(code)] = {"description": _REASONS.get(code, "error"), **err}
        responses["503"] = {"description": "the database is unavailable", **err}
        item: dict[str, Any] = {"summary": op.summary, "operationId": op.handler.__name__,
                                "parameters": params, "responses": responses,
                                "tags": ["admin" if op.role is Role.ADMIN else "operator"]}
        if op.body is not None:
            body = schema_of(op.body)
            item["requestBody"] = {"required": bool(body.get("required")),
                                   "content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "The operators' and admins' API. Every route needs `Authorization: Bearer "
                                "<token>` (`callbackd users add NAME --role operator|admin`)."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


_REASONS = {400: "bad parameters", 404: "no such record", 409: "not possible in the callback's state",
            422: "invalid body"}
