"""Typed refusals of the issuing service; the API answers ``status`` and ``code`` (docs/server.md §API)."""

from __future__ import annotations

from cityid.errors import CityIdError


class ServiceError(CityIdError):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` a stable machine code."""

    status = 400
    code = "bad_request"


class ValidationError(ServiceError):
    status = 400
    code = "invalid_request"


class NotFoundError(ServiceError):
    status = 404
    code = "not_found"


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class CapacityError(ServiceError):
    status = 507
    code = "status_list_full"


class ChainUnavailableError(ServiceError):
    status = 502
    code = "chain_unavailable"


class StorageUnavailableError(ServiceError):
    status = 503
    code = "storage_unavailable"


class ForbiddenError(ServiceError):
    """The terminal (and clerk) may not act on this credential or DID (docs/server.md §Scopes)."""

    status = 403
    code = "out_of_scope"
