"""Bearer tokens (RFC 6750) as every transport of the server checks them."""

from __future__ import annotations

import hmac

__all__ = ["bearer_token_matches"]


def bearer_token_matches(authorization: str | bytes | None, token: str) -> bool:
    """Whether an `authorization` header value carries `token`. The scheme is matched
    without regard to case (RFC 9110 11.1: `bearer` is as good as `Bearer`); the token
    is compared in constant time."""
    if authorization is None:
        return False
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, credentials = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())
