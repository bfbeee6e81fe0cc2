#!/bin/sh
# First start of the postgres volume only (docker-entrypoint-initdb.d): the Prefect server's database next
# to MLflow's (POSTGRES_DB). Both belong to POSTGRES_USER.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$PREFECT_DB\" OWNER \"$POSTGRES_USER\";"
