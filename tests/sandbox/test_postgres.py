"""The sandbox's stand-in for RDS: a real PostgreSQL server that, like RDS, takes only TLS
connections with a password, and that a crashed run's clean-up finds by its data directory."""

from __future__ import annotations

import os

import psycopg
import pytest

from sandbox.postgres import PostgresServer, cleanup_leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs the server as the postgres user")


def test_database_takes_tls_with_a_password_only_and_a_crashed_runs_server_is_cleaned_up():
    server = PostgresServer(name="pytest-cleanup").start()
    try:
        server.create_database("jupyterhub", "ec2hub", "s3cret-pw")
        login = {"host": "127.0.0.1", "port": server.port, "user": "ec2hub", "dbname": "jupyterhub",
                 "connect_timeout": 5}
        with psycopg.connect(**login, password="s3cret-pw", sslmode="require") as conn:
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
            psycopg.connect(**login, password="s3cret-pw", sslmode="disable")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**login, password="wrong", sslmode="require")
        # As if the run had crashed: only its own server is stopped, and its directory removed.
        assert len(cleanup_leftovers("pytest-cleanup")) == 1
        assert not server.root.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**login, password="s3cret-pw", sslmode="require")
    finally:
        server.stop()
