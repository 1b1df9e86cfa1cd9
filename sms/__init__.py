"""SMS fallback: senders, templates, segment counting, evaluation links and the outbox worker."""
