"""SMS senders behind one interface (`Sender`), chosen per number by `Router`."""

from .base import OutgoingSms, Router, Sender, SendResult

__all__ = ["OutgoingSms", "Router", "SendResult", "Sender"]
