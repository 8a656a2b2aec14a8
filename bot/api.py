"""The REST API under /api/v1: bearer tokens bound to a person, scoped to their regions.

Errors have one shape: ``{"error": {"code": "...", "message": "..."}}``.  The OpenAPI 3 document
at /api/v1/openapi.json is built from the same table of operations the routes come from, and a
test checks the two agree.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import insert, select

from flows.refusals import Refused
from flows.texts import Texts
from storage import repo
from storage.db import Database
from storage.models import MAX_ID, ApiToken, RegionLevel, Role, is_number, utcnow

PREFIX = "/api/v1"
STAFF_ROLES = (Role.WARDEN, Role.DOCTOR, Role.ADMIN)
tokens = ApiToken.__table__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALLER = web.RequestKey("caller", repo.PersonInfo)
"""The authenticated person of an /api/v1 request: ``request[CALLER]`` in handlers."""


class ApiError(web.HTTPException):
    """An API error with a machine code and a human reason, rendered in the one JSON shape."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        """``details`` join code and message in the error object (e.g. a whole report)."""
        self.status_code = status
        error = {"code": code, "message": message, **details}
        super().__init__(
            text=json.dumps({"error": error}, ensure_ascii=False, default=str),
            content_type="application/json",
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    db: Database, person_id: int, *, label: str = "", days: int | None = None
) -> str:
    """Issue a new token for a person; only its hash is stored, so it is shown once."""
    token = "gb_" + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(days=days) if days else None
    async with db.write() as conn:
        if await repo.load_person(conn, person_id) is None:
            raise LookupError(f"no person with id {person_id}")
        await conn.execute(
            insert(tokens).values(
                token_hash=hash_token(token),
                person_id=person_id,
                label=label,
                created_at=utcnow(),
                expires_at=expires,
                revoked=False,
            )
        )
        await repo.record_audit(
            conn,
            actor_id=None,
            action="api.token.create",
            target_type="person",
            target_id=person_id,
            detail={"label": label},
        )
    return token


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler_name: str
    summary: str
    parameters: list[dict[str, Any]] = field(default_factory=list)
    public: bool = False


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


OPERATIONS = [
    Operation("GET", "/openapi.json", "openapi", "This OpenAPI document", public=True),
    Operation("GET", "/me", "me", "The caller: person, roles and scopes"),
    Operation(
        "GET",
        "/regions",
        "list_regions",
        "Regions in the caller's scope",
        [
            _query(
                "level",
                "Only this level",
                {"type": "string", "enum": [lv.value for lv in RegionLevel]},
            )
        ],
    ),
    Operation(
        "GET",
        "/regions/{code}",
        "get_region",
        "One region and its children",
        [_path("code", "Region code")],
    ),
    Operation(
        "GET",
        "/people",
        "list_people",
        "People living in a region of the caller's scope",
        [
            _query("region", "Region code (default: the caller's first scope)", {"type": "string"}),
            _query("limit", "Page size (1-500)", {"type": "integer", "minimum": 1, "maximum": 500}),
            _query("after", "Return people with id greater than this", {"type": "integer"}),
        ],
    ),
    Operation(
        "GET",
        "/people/{id}",
        "get_person",
        "One person in the caller's scope",
        [_path("id", "Person id")],
    ),
]

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def openapi_document(operations: list[Operation]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": op.handler_name,
            "summary": op.summary,
            "parameters": op.parameters,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "default": {
                    "description": "Error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        if op.public:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.0.3",
        "info": {"title": "gridbot API", "version": "1"},
        "servers": [{"url": PREFIX}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"bearer": []}],
    }


class Api:
    """Routes and handlers of /api/v1.  Feature modules add operations with ``extend``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.operations: list[Operation] = list(OPERATIONS)
        self.handlers: dict[str, Handler] = {
            "openapi": self.openapi,
            "me": self.me,
            "list_regions": self.list_regions,
            "get_region": self.get_region,
            "list_people": self.list_people,
            "get_person": self.get_person,
        }

    def extend(self, operations: list[Operation], handlers: dict[str, Handler]) -> None:
        self.operations.extend(operations)
        self.handlers.update(handlers)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route(op.method, PREFIX + op.path, self.handlers[op.handler_name])
            for op in self.operations
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate /api/v1 calls and turn every error into the one JSON shape."""
        if not request.path.startswith(PREFIX + "/"):
            return await handler(request)
        try:
            if request.path != PREFIX + "/openapi.json":
                request[CALLER] = await self._authenticate(request)
            return await handler(request)
        except ApiError:
            raise
        except web.HTTPNotFound:
            raise ApiError(404, "not_found", f"no such endpoint: {request.path}") from None
        except web.HTTPMethodNotAllowed:
            raise ApiError(
                405, "method_not_allowed", f"{request.method} is not allowed here"
            ) from None

    async def _authenticate(self, request: web.Request) -> repo.PersonInfo:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>")
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(tokens).where(tokens.c.token_hash == hash_token(token.strip()))
                )
            ).first()
            if row is None or row.revoked:
                raise ApiError(401, "unauthorized", "unknown or revoked token")
            if row.expires_at is not None and row.expires_at < utcnow():
                raise ApiError(401, "token_expired", "this token has expired")
            person = await repo.load_person(conn, row.person_id)
        if person is None or not person.has_role(*STAFF_ROLES):
            raise ApiError(403, "forbidden", "this token's person has no staff role")
        return person

    # -- handlers ----------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.operations))

    async def me(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        return _json(
            {
                "id": person.id,
                "name": person.name,
                "scopes": [
                    {"role": s.role, "region": _region_json(s.region)} for s in person.scopes
                ],
            }
        )

    async def list_regions(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        level = request.query.get("level")
        if level is not None and level not in {lv.value for lv in RegionLevel}:
            raise ApiError(
                400, "bad_parameter", f"level must be one of {[v.value for v in RegionLevel]}"
            )
        seen: dict[int, repo.RegionInfo] = {}
        async with self.db.read() as conn:
            for root in repo.scope_roots(person.scope_regions(*STAFF_ROLES)):
                for region in await repo.list_subregions(conn, root, level=level):
                    seen[region.id] = region
        return _json({"regions": [_region_json(r) for r in seen.values()]})

    async def get_region(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        async with self.db.read() as conn:
            region = await scoped_region(conn, person, request.match_info["code"])
            children = [
                r for r in await repo.list_subregions(conn, region) if r.parent_id == region.id
            ]
        return _json({**_region_json(region), "children": [_region_json(c) for c in children]})

    async def list_people(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        limit = _int_param(request, "limit", 100, 1, 500)
        after = _int_param(request, "after", 0, 0, MAX_ID)
        code = request.query.get("region") or person.scope_regions(*STAFF_ROLES)[0].code
        async with self.db.write() as conn:
            region = await scoped_region(conn, person, code)
            rows = await repo.list_people(conn, region, limit=limit, after_id=after)
            roles = await repo.roles_by_person(conn, [r.id for r in rows])
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.people.list",
                target_type="region",
                target_id=region.code,
                region_id=region.id,
                detail={"count": len(rows)},
            )
        full_phone = repo.sees_full_phone(person, region)
        items = [
            {
                "id": r.id,
                "name": r.name,
                "phone": r.phone if full_phone else repo.mask_phone(r.phone),
                "region": r.region_code,
                "household_id": r.household_id,
                "opted_out": r.opted_out,
                "roles": sorted(set(roles[r.id])),
            }
            for r in rows
        ]
        next_after = items[-1]["id"] if len(items) == limit else None
        return _json({"people": items, "next_after": next_after})

    async def get_person(self, request: web.Request) -> web.Response:
        person = request[CALLER]
        raw_id = request.match_info["id"]
        if not (raw_id.isascii() and raw_id.isdigit()):
            raise ApiError(400, "bad_parameter", "id must be a number")
        async with self.db.write() as conn:
            # An id beyond BIGINT cannot exist (and would make PostgreSQL raise).
            target = (
                await repo.load_person(conn, int(raw_id))
                if is_number(raw_id) and int(raw_id) <= MAX_ID
                else None
            )
            if target is None:
                raise ApiError(404, "not_found", f"no person with id {raw_id}")
            if target.region is None or not person.can_act_on(target.region, *STAFF_ROLES):
                raise ApiError(403, "out_of_scope", "this person is outside your scope")
            await repo.record_audit(
                conn,
                actor_id=person.id,
                action="api.people.view",
                target_type="person",
                target_id=target.id,
                region_id=target.region.id,
            )
            household = await repo.household_label(conn, target.household_id)
        full_phone = repo.sees_full_phone(person, target.region)
        return _json(
            {
                "id": target.id,
                "name": target.name,
                "phone": target.phone if full_phone else repo.mask_phone(target.phone),
                "region": _region_json(target.region),
                "household": household,
                "opted_out": target.opted_out,
                "roles": [{"role": s.role, "region": s.region.code} for s in target.scopes],
            }
        )


async def scoped_region(conn: Any, person: repo.PersonInfo, code: str) -> repo.RegionInfo:
    """The region with ``code`` if it lies in the caller's scope; 404 or 403 otherwise."""
    try:
        return await repo.region_in_scope(conn, person, code, *STAFF_ROLES)
    except repo.RegionNotFound:
        raise ApiError(404, "unknown_region", f"no region with code {code!r}") from None
    except repo.OutOfScope:
        raise ApiError(403, "out_of_scope", f"region {code} is outside your scope") from None


def refusal_error(texts: Texts, refused: Refused) -> ApiError:
    """A service's refusal as an API error: the reason is the ``code``, the sentence a chat
    user reads is the ``message``."""
    message = texts.render(refused.template, **refused.values)
    return ApiError(refused.http_status, refused.reason, message)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; no body reads as ``{}``, anything else is a 400."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_body", "the body must be a JSON object")
    return data


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not is_number(raw) or not low <= int(raw) <= high:
        bound = f"{low}-{high}" if high < MAX_ID else f">= {low}"
        raise ApiError(400, "bad_parameter", f"{name} must be an integer {bound}")
    return int(raw)


def _region_json(region: repo.RegionInfo) -> dict[str, Any]:
    return {
        "id": region.id,
        "code": region.code,
        "name": region.name,
        "level": region.level,
        "parent_id": region.parent_id,
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialize {type(value).__name__}")
