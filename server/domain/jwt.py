"""HS256 JSON Web Tokens for end users (X-Appwrite-JWT).

Claims the service reads:
  projectId        the project the token was issued for (required; a token
                   works in that project only)
  userId (or sub)  the user's ID (required)
  teams            list of "<teamId>" or "<teamId>/<role>" strings (optional)
  exp              expiry, Unix seconds (required); at most `max_ttl` after
                   `iat` (or after now, without `iat`)
  nbf, iat         optional; checked with a small leeway
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

LEEWAY = 10


class InvalidToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict, secret: str) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def decode(token: str, secret: str, project: str, max_ttl: float, now: float | None = None) -> dict:
    """The claims of a valid token issued for `project`; InvalidToken otherwise."""
    try:
        header_b64, body_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims = json.loads(_unb64(body_b64))
        signature = _unb64(signature_b64)
    except (ValueError, TypeError):
        raise InvalidToken("Malformed token.") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidToken("Only HS256 tokens are accepted.")
    expected = hmac.new(secret.encode(), f"{header_b64}.{body_b64}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise InvalidToken("Signature verification failed.")
    if not isinstance(claims, dict):
        raise InvalidToken("Claims must be an object.")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise InvalidToken("The token has no expiry (exp).")
    if now > exp + LEEWAY:
        raise InvalidToken("Expired token.")
    iat = claims.get("iat")
    if iat is not None and (not isinstance(iat, (int, float)) or isinstance(iat, bool)):
        raise InvalidToken("iat must be a number.")
    # An iat in the future must not stretch the lifetime: count from now then.
    issued = now if iat is None else min(iat, now)
    if exp - issued > max_ttl + LEEWAY:
        raise InvalidToken(f"The token lives longer than the allowed {int(max_ttl)} s.")
    nbf = claims.get("nbf")
    if isinstance(nbf, (int, float)) and now + LEEWAY < nbf:
        raise InvalidToken("The token is not valid yet.")
    user = claims.get("userId") or claims.get("sub")
    if not isinstance(user, str) or not user:
        raise InvalidToken("The token names no user (userId).")
    if claims.get("projectId") != project:
        raise InvalidToken("The token was not issued for this project.")
    teams = claims.get("teams", [])
    if not isinstance(teams, list) or not all(isinstance(team, str) for team in teams):
        raise InvalidToken("teams must be a list of strings.")
    return claims
