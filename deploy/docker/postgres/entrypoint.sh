#!/bin/sh
# Initialises $PGDATA on first start (trust auth on the container network, the database
# $POSTGRES_DB created), then runs PostgreSQL in the foreground as PID 1.
set -eu
: "${POSTGRES_DB:=postgres}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    chmod 700 "$PGDATA"
    initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all trust" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE DATABASE \"$POSTGRES_DB\""
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "initialised $PGDATA with database $POSTGRES_DB"
fi
exec postgres -D "$PGDATA" "$@"
