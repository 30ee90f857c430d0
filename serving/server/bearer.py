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
    # HTTP servers hand over header bytes that are not UTF-8 as surrogate escapes: such a
    # header is simply not the token.
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode())
