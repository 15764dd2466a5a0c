"""Alembic's environment: migrations run on the connection `upgrade` hands over, inside
the transaction that holds the schema lock."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=context.config.attributes["version_table"])
with context.begin_transaction():
    context.run_migrations()
