"""SMS errors: a send either failed for good, may be retried, or has an unknown outcome."""

from __future__ import annotations

from callback_queue.errors import CallbackdError


class SmsError(CallbackdError):
    """The SMS could not be sent."""


class TemplateError(SmsError):
    """The SMS template cannot be rendered."""


class TransientSendError(SmsError):
    """The provider refused for now (rate limit, server error); the message was not sent: retry later."""

    retryable = True

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(SmsError):
    """The provider rejected the message (invalid number, bad request): it will not be retried."""


class SendOutcomeUnknown(SmsError):
    """The request may or may not have reached the provider (timeout, connection lost): reconcile first."""

    retryable = True


class ReconcileError(SmsError):
    """The provider could not be asked whether the message was sent."""

    retryable = True
