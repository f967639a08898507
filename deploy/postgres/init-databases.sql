-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates "prefect"; MLflow gets a database of its own: both keep an
-- alembic_version table, so they cannot share one.
CREATE DATABASE mlflow;
