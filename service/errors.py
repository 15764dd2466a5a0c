"""Domain exceptions. Nothing here knows about HTTP; `service.api.problems` maps them."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service reports to a client or an operator."""

    title = "Service error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


# --- not found -------------------------------------------------------------------------
class NotFound(ServiceError):
    title = "Not found"


class ModelNotFound(NotFound):
    title = "Model not found"


class VersionNotFound(NotFound):
    title = "Version not found"


class AliasNotFound(NotFound):
    title = "Alias not found"


class SeriesNotFound(NotFound):
    title = "Series not found"


# --- invalid input -----------------------------------------------------------------------
class InvalidInput(ServiceError):
    """The request (or a file) is well-formed but its content cannot be used."""

    title = "Invalid input"


class InvalidName(InvalidInput):
    title = "Invalid name"


class InvalidTable(InvalidInput):
    title = "Invalid table"


class SpecError(InvalidInput):
    """A forecaster or model spec that cannot be resolved against the allow-list."""

    title = "Invalid model spec"


class CapabilityUnavailable(InvalidInput):
    """The model cannot do what was asked (intervals, exogenous data, ...)."""

    title = "Capability unavailable"


class LimitExceeded(InvalidInput):
    title = "Limit exceeded"


class Unauthorized(ServiceError):
    title = "Unauthorized"


class Forbidden(ServiceError):
    title = "Forbidden"


class PayloadTooLarge(ServiceError):
    title = "Payload too large"


# --- registry / server state -----------------------------------------------------------
class IntegrityError(ServiceError):
    """An artifact whose bytes do not match its manifest; it is never unpickled."""

    title = "Artifact integrity check failed"


class VersionLoadError(ServiceError):
    """A version that exists but cannot be loaded (integrity, unpickling, libraries)."""

    title = "Version cannot be loaded"


class NotReady(ServiceError):
    title = "Not ready"


class Conflict(ServiceError):
    title = "Conflict"


class SpecFileInvalid(Conflict):
    """A ``model.yaml`` on disk that does not parse or validate: fix the file (409)."""

    title = "Stored model spec is invalid"

    @classmethod
    def about(cls, origin: str, detail: str) -> SpecFileInvalid:
        return cls(f"{origin} on disk is invalid: {detail} (fix the file, or PUT a new spec)"[:2000], file=origin)


class AliasesUnreadable(Conflict):
    """``aliases.json`` is not valid JSON, has wrong types, or fails its signature.
    Readers keep the last good aliases and report this; where none is known it is a 409."""

    title = "Aliases file unreadable"


class TooManyJobs(ServiceError):
    """A key has too many queued or running jobs (429 with Retry-After)."""

    title = "Too many jobs"


class InsufficientStorage(ServiceError):
    """The disk is full (507); nothing was stored."""

    title = "Insufficient storage"


class StorageUnavailable(ServiceError):
    """A folder the service writes to is read-only or not writable (503)."""

    title = "Storage unavailable"


class ForecastFailed(ServiceError):
    """sktime raised while forecasting on input that passed validation."""

    title = "Forecast failed"
