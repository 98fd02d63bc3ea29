"""Alembic environment: the app's engine (DATABASE_URL or SQLite), or a connection handed in."""

from alembic import context

from app.models import Base

target_metadata = Base.metadata


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    from app.core.database import engine

    with engine.sa_engine.connect() as new_connection:
        run_migrations(new_connection)
        new_connection.commit()
