"""API keys: ``Authorization: Bearer <key>``, compared in constant time with the settings' keys.

Writes need the ``api_key`` setting's key; none configured: every write is refused (403, saying how to enable
writes). Reads (search, items, images) are open unless ``read_api_key`` is set; then they need it (or the write
key). No or malformed credentials: 401; a wrong key: 403.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.dependencies import SettingsDep
from service.errors import ApiError

# auto_error=False: the refusals below carry the service's error body; the scheme still documents the key in OpenAPI
BEARER = HTTPBearer(auto_error=False, description="The service's write key (the api_key setting, DUET_API_KEY), "
                    "or for reads, when reads are keyed, the read key (read_api_key, DUET_READ_API_KEY).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
# OpenAPI of the read routes: "no key" beside the bearer scheme FastAPI lists for them, as reads are open unless the
# read key is set
READ_SECURITY: list[dict[str, list[str]]] = [{}]
WRITE_REALM = {"WWW-Authenticate": 'Bearer realm="duet-writes"'}
READ_REALM = {"WWW-Authenticate": 'Bearer realm="duet"'}


def _secret(key: SecretStr | None) -> str:
    return key.get_secret_value() if key is not None else ""


def _matches(credentials: HTTPAuthorizationCredentials, keys: list[str]) -> bool:
    # bytes as they came (headers are latin-1), against the key's UTF-8: a non-ASCII key still compares exactly;
    # every key is compared, so the time taken does not tell which one (or how much of one) matched
    given = credentials.credentials.encode("latin-1")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return found


def _check(credentials: HTTPAuthorizationCredentials | None, keys: list[str], challenge: dict[str, str]) -> None:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "this route needs the API key: send 'Authorization: Bearer <key>'",
                       headers=challenge)
    if not _matches(credentials, keys):
        raise ApiError(403, "invalid_api_key", "the API key is not valid")


async def require_write_key(settings: SettingsDep, credentials: Credentials) -> None:
    key = _secret(settings.api_key)
    if not key:
        raise ApiError(403, "writes_disabled", "the write API is disabled on this server: start it with an API key "
                       "(--api-key KEY or the DUET_API_KEY environment variable) to enable writes")
    _check(credentials, [key], WRITE_REALM)


async def require_read_key(settings: SettingsDep, credentials: Credentials) -> None:
    read_key = _secret(settings.read_api_key)
    if read_key:  # keyed reads; the write key reads too
        _check(credentials, [k for k in (read_key, _secret(settings.api_key)) if k], READ_REALM)
