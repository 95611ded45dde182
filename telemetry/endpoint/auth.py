"""Bearer-token authentication for every route but the health probes.

Imports FastAPI, so only the app builder imports it.
"""

# No ``from __future__ import annotations``: FastAPI evaluates ``check_token``'s annotations.
import hmac
from dataclasses import dataclass, field
from typing import Any, Optional

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from telemetry.endpoint.models import Problem

__all__ = ["Protection", "protection"]


@dataclass(frozen=True)
class Protection:
    """What a protected route adds: its ``dependencies`` and its documented ``responses``."""

    dependencies: list[Any] = field(default_factory=list)
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)


def protection(token: str | None) -> Protection:
    """The token check for protected routes; with no token, nothing is checked."""
    if not token:
        return Protection()
    bearer = HTTPBearer(auto_error=False, description="the agent's --token")
    expected = token.encode()

    def check_token(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        # Constant-time: the comparison must not tell a caller how much of the token was right.
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    return Protection(
        dependencies=[Depends(check_token)],
        responses={401: {"model": Problem, "description": "missing or wrong token"}},
    )
