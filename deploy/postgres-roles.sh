#!/bin/sh
# The database's roles for memprog, run once by the postgres image's first start
# (/docker-entrypoint-initdb.d) or by hand as the server's administrator:
#
#   MEMPROG_DB_PASSWORD=... POSTGRES_DB=memprog sh deploy/postgres-roles.sh
#
# memprog: the services' user. It can log in to the database and owns only the schema `memprog`
# (its tables are made there by the services' first start, the schema's migrations later); it
# cannot create anything elsewhere, nor other databases or roles. memprog_read: a reporting
# role with SELECT on that schema (dashboards, notebooks), no login of its own: grant it to a
# person's role.
set -eu
: "${MEMPROG_DB_PASSWORD:?set MEMPROG_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-memprog}" \
    -v password="$MEMPROG_DB_PASSWORD" <<'SQL'
CREATE ROLE memprog LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE memprog_read NOLOGIN;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA memprog AUTHORIZATION memprog;
ALTER ROLE memprog IN DATABASE :"DBNAME" SET search_path = memprog;
GRANT CONNECT ON DATABASE :"DBNAME" TO memprog, memprog_read;
GRANT USAGE ON SCHEMA memprog TO memprog_read;
ALTER DEFAULT PRIVILEGES FOR ROLE memprog IN SCHEMA memprog GRANT SELECT ON TABLES TO memprog_read;
SQL
