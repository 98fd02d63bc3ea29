"""A scratch PostgreSQL database for the benches, on TEST_POSTGRES_ADMIN_URL's server.

Run as a script's sibling module: `python bench/x.py` puts bench/ first on sys.path.
"""

import os

import psycopg2
from psycopg2 import sql

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def admin_connection():
    """An autocommit connection to the admin database, and the server's URL without a database."""
    url = os.environ.get("TEST_POSTGRES_ADMIN_URL", DEFAULT_ADMIN_URL)
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection, url.rsplit("/", 1)[0]


def recreate_database(admin, name: str, drop_only: bool = False) -> None:
    """Drop database `name` (closing its connections) and, unless `drop_only`, create it empty."""
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if not drop_only:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
