"""Alembic environment for the ortho-node index."""

from __future__ import annotations

from alembic import context

from ortho_node.db.engine import make_engine
from ortho_node.db.models import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url) if url.startswith("sqlite") else make_engine(url, pool_size=1)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER TABLE needs batch mode
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
