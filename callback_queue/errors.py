"""One root exception for callbackd; each class's docstring is its default message."""

from __future__ import annotations


class CallbackdError(Exception):
    """callbackd failed."""

    retryable = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CallbackdError):
    """The configuration is not valid."""


class StoreError(CallbackdError):
    """The database could not be used."""

    retryable = True


class SchemaOutOfDate(StoreError):
    """The database schema is not current: run `callbackd db upgrade`."""

    retryable = False


class NotFound(CallbackdError):
    """No such record."""


class InvalidTransition(CallbackdError):
    """That change is not allowed in the callback's current state."""


class LeaseLost(CallbackdError):
    """The claim on this callback is held by someone else or has expired."""
