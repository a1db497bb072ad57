"""The write API's key: ``Authorization: Bearer <key>``, compared in constant time with the ``api_key`` setting.

No key configured: every write is refused (403, saying how to enable writes); no or malformed credentials: 401;
a wrong key: 403.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.dependencies import SettingsDep
from service.errors import ApiError

# auto_error=False: the refusals below carry the service's error body; the scheme still documents the key in OpenAPI
BEARER = HTTPBearer(auto_error=False, description="The service's write key (the api_key setting, DUET_API_KEY).")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="duet-writes"'}


def require_write_key(settings: SettingsDep,
                      credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if not key:
        raise ApiError(403, "writes_disabled", "the write API is disabled on this server: start it with an API key "
                       "(--api-key KEY or the DUET_API_KEY environment variable) to enable writes")
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "this route needs the API key: send 'Authorization: Bearer <key>'",
                       headers=CHALLENGE)
    # bytes as they came (headers are latin-1), against the key's UTF-8: a non-ASCII key still compares exactly
    given = credentials.credentials.encode("latin-1")
    if not hmac.compare_digest(given, key.encode("utf-8")):
        raise ApiError(403, "invalid_api_key", "the API key is not valid")
