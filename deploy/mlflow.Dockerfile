# MLflow tracking server for deploy/docker-compose.yml: the official image plus the PostgreSQL
# drivers and boto3 for the S3-compatible artifact store, which that image does not ship. Both
# drivers: SQLAlchemy 2.0 opens postgresql:// URLs with psycopg2, 2.1 with psycopg 3 (the one
# `make stack` names, deploy/stack/stack.py).
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
RUN pip install --no-cache-dir 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.1' 'boto3>=1.34'
