"""Alembic environment: run against the connection storage/db.py hands over (config.attributes),
or against DATABASE_URL when called from the `alembic` command line."""

from alembic import context
from sqlalchemy import create_engine

from playground.config import settings
from storage.models import Base

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(settings().database_url).connect() as connection:
        run(connection)
