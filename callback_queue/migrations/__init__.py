"""Alembic migrations for callbackd's schema (run with `callbackd db upgrade`)."""
