# MLflow tracking server for deploy/docker-compose.yml: the official image plus the PostgreSQL
# driver and boto3 for the S3-compatible artifact store, which that image does not ship.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
RUN pip install --no-cache-dir 'psycopg2-binary>=2.9' 'boto3>=1.34'
