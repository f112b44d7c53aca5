"""Engine and sessions. SQLite by default (WAL, busy timeout, foreign keys on every connection);
any SQLAlchemy URL in DATABASE_URL (e.g. PostgreSQL) works unchanged. Every database is brought
to the newest schema by the migrations in storage/migrations when first opened."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, make_url, update
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"      # the schema databases made before migrations already have


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema. A database from before migrations (a `runs`
    table, no `alembic_version`) is first stamped as the first revision, then upgraded in place."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "runs" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


@lru_cache(maxsize=None)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not path.startswith("file:"):   # a file: URI names a file that exists
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    upgrade(engine)
    return engine


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used; the message says where it is and why, in one line."""


def where(url: str) -> str:
    """The database as an operator finds it: the SQLite file's path, else the URL without its password."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = (parsed.database or "").removeprefix("file:").split("?")[0]
        return str(Path(path).resolve()) if path and path != ":memory:" else ":memory:"
    return parsed.render_as_string(hide_password=True)


def check_database(url: str) -> None:
    """At start-up, before the model warms up: open the database, bring it to the newest schema, check
    it (SQLite: PRAGMA quick_check) and make it take a write (rolled back), so a locked, read-only or
    corrupt database stops the server in seconds with its path, instead of losing the first run."""
    from .models import Run   # the table the write goes to

    try:
        engine = engine_for(url)
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
                if verdict != "ok":
                    raise DatabaseUnavailable(f"The database {where(url)} is damaged (quick_check: {verdict}).")
            connection.rollback()
            connection.execute(update(Run).where(Run.id == "").values(status=Run.status))
            connection.rollback()
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # sqlite3 / psycopg / OS errors: their first line says locked, read-only, not a database
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(f"The database {where(url)} cannot be used: {reason}.") from None


def session_factory(url: str) -> sessionmaker:
    return sessionmaker(engine_for(url), expire_on_commit=False)
