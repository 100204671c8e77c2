"""Who is calling: project resolution, API keys and scopes.

Every call names a project (`x-appwrite-project`) and, for management calls,
an API key (`x-appwrite-key`) whose scopes allow the call. Order follows
Appwrite: project first (404), then credentials and scope (401), then the
call's own parameters (400).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

from server.domain import jwt
from server.domain.errors import jwt_invalid, missing_scope, project_not_found, user_unauthorized
from server.store.models import ApiKey, Project


class Scope(str, Enum):
    FUNCTIONS_READ = "functions.read"
    FUNCTIONS_WRITE = "functions.write"
    EXECUTION_READ = "execution.read"
    EXECUTION_WRITE = "execution.write"
    EVENTS_WRITE = "events.write"  # publish events (internal services)


ALL_SCOPES = tuple(s.value for s in Scope)
DEFAULT_PROJECT = "console"  # Appwrite's project when the header is missing


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request."""

    project: str
    role: str  # "app" (API key), "member" (user) or "guest"
    scopes: frozenset[str]
    user_id: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)
    jwt: str = ""
    address: str = ""  # the client's address, for rate limits of anonymous callers

    @property
    def is_key(self) -> bool:
        return self.role == "app"

    def require(self, scope: Scope) -> None:
        if scope.value not in self.scopes:
            who = "API key" if self.is_key else "User"
            raise missing_scope(who, "application" if self.is_key else self.role, scope.value)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _Recent:
    """A tiny TTL cache: projects and keys are read on every call, change rarely."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict = {}

    def get(self, key, load):
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (now + self.ttl, value)
        return value

    def has(self, key) -> bool:
        hit = self._entries.get(key)
        return hit is not None and hit[0] > time.monotonic()

    def forget(self, key) -> None:
        self._entries.pop(key, None)


# Seconds a project or key lookup is reused; a new key works at once (misses
# are not cached for keys), a deleted one may work this long.
_recent = _Recent(ttl=5.0)


def _project_exists(project_id: str) -> bool:
    return _recent.get(("project", project_id), lambda: Project.get_or_none(Project.id == project_id) is not None)


def _key(digest: str) -> tuple[str, frozenset[str]] | None:
    def load():
        key = ApiKey.get_or_none(ApiKey.secret_hash == digest)
        return (key.project_id, frozenset(key.scopes)) if key else None

    found = _recent.get(("key", digest), load)
    if found is None:
        _recent.forget(("key", digest))  # misses are not cached: a new key works at once
    return found


# End users (JWT) hold these scopes, as Appwrite's `member` role did.
MEMBER_SCOPES = frozenset({Scope.EXECUTION_READ.value, Scope.EXECUTION_WRITE.value})


@dataclass(frozen=True)
class Authenticator:
    """Turns request metadata into a Caller (blocking: may read the DB).

    Precedence: an API key, else an end-user JWT (HS256 with `jwt_secret`),
    else a guest. `address` is the caller's address as the transport saw it
    (see `client_address`), for rate limits of anonymous callers.
    """

    jwt_secret: str
    jwt_max_ttl: float = 3600

    def cached(self, metadata: Mapping[str, str], address: str = "") -> Caller | None:
        """The caller when every lookup is cached (no I/O), else None."""
        return self._resolve(metadata, address, cached_only=True)

    def __call__(self, metadata: Mapping[str, str], address: str = "") -> Caller:
        return self._resolve(metadata, address, cached_only=False)

    def _resolve(self, metadata: Mapping[str, str], address: str, cached_only: bool) -> Caller | None:
        project_id = project_of(metadata)
        if cached_only and not _recent.has(("project", project_id)):
            return None
        if not _project_exists(project_id):
            _recent.forget(("project", project_id))  # a project created later is found at once
            raise project_not_found()
        secret = metadata.get("x-appwrite-key", "")
        if secret:
            digest = hash_secret(secret)
            if cached_only and not _recent.has(("key", digest)):
                return None
            key = _key(digest)
            if key is None or key[0] != project_id:
                raise user_unauthorized("Invalid API key for this project.")
            return Caller(project=project_id, role="app", scopes=key[1], roles=frozenset({"role:app", "role:all"}))
        token = metadata.get("x-appwrite-jwt", "")
        if token:
            try:
                claims = jwt.decode(token, self.jwt_secret, project_id, self.jwt_max_ttl)
            except jwt.InvalidToken as error:
                raise jwt_invalid(str(error)) from None
            user_id = claims.get("userId") or claims.get("sub")
            roles = {"role:all", "role:member", f"user:{user_id}"}
            for membership in claims.get("teams", []):
                if membership:
                    team, _, team_role = membership.partition("/")
                    roles.add(f"team:{team}")
                    if team_role:
                        roles.add(f"team:{team}/{team_role}")
            return Caller(project=project_id, role="member", scopes=MEMBER_SCOPES, user_id=user_id,
                          roles=frozenset(roles), jwt=token)
        return Caller(project=project_id, role="guest", scopes=frozenset(), roles=frozenset({"role:guest", "role:all"}),
                      address=address)


def project_of(metadata: Mapping[str, str]) -> str:
    """`X-Appwrite-Project`, else the `project` query parameter (as Appwrite
    allowed; REST only, seen in the path Envoy forwards), else `console`."""
    project = metadata.get("x-appwrite-project")
    if project:
        return project
    path = metadata.get("x-envoy-original-path", "")
    if "project=" in path:
        values = parse_qs(urlsplit(path).query).get("project")
        if values and values[0]:
            return values[0]
    return DEFAULT_PROJECT


GATEWAY_HEADER = "x-functions-gateway"  # Envoy sets it (overwriting any a client sent)


def client_address(metadata: Mapping[str, str], peer: str, gateway_secret: str) -> str:
    """The caller's address. On requests that carry the gateway's secret it is
    the last x-forwarded-for entry, the peer Envoy itself appended
    (use_remote_address); earlier entries, and x-envoy-* headers, which Envoy
    passes through from loopback clients, are the client's word and ignored.
    Anyone else is known by the transport's peer address, so a direct gRPC
    client cannot pose as many."""
    if gateway_secret and secrets.compare_digest(metadata.get(GATEWAY_HEADER, ""), gateway_secret):
        forwarded = metadata.get("x-forwarded-for", "").split(",")[-1].strip()
        if forwarded:
            return forwarded
    return _peer_host(peer)


def _peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `::1`, `unix:...` -> `unix`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return kind


def create_project(project_id: str, name: str = "") -> Project:
    project, _ = Project.get_or_create(id=project_id, defaults={"name": name or project_id, "date_created": int(time.time())})
    return project


def create_key(project_id: str, name: str, scopes: tuple[str, ...] = ALL_SCOPES) -> str:
    """Create an API key and return its secret (shown once; only its hash is stored)."""
    if not scopes:
        raise ValueError("a key needs at least one scope: " + ", ".join(ALL_SCOPES))
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
    if Project.get_or_none(Project.id == project_id) is None:
        raise ValueError(f"project {project_id!r} does not exist")
    secret = secrets.token_hex(64)
    ApiKey.create(project=project_id, name=name, secret_hash=hash_secret(secret), scopes=list(scopes), date_created=int(time.time()))
    return secret
