"""Apply Alembic migrations programmatically (``main.py db upgrade``, ``make run``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_database(url: str, revision: str = "heads") -> None:
    """Bring the database at ``url`` to ``revision`` (all heads: features migrate in parallel
    branches from the initial schema).  Synchronous: call it off the event loop."""
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def revise(url: str, message: str) -> None:
    """Autogenerate a new revision against ``url`` (a developer tool)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
