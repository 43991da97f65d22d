#!/usr/bin/env bash
# Creates the secrets docker-compose.yml mounts: three bearer tokens (agents, operators, edges
# towards the control plane) and one client API key for the edges; for postgres.yml, the
# PostgreSQL password and the edges' DSN. Existing files are kept.
#
# The files are world-readable (0644) because compose bind-mounts them into containers that
# run as uid 10001; the directory itself is 0700, so other users of this host cannot reach them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077
mkdir -p secrets
chmod 0700 secrets
for name in agent-token admin-token edge-token api-keys; do
  file="secrets/$name"
  if [ ! -s "$file" ]; then
    prefix=""
    [ "$name" = api-keys ] && prefix="sk-corral-"
    printf '%s%s\n' "$prefix" "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$file"
    echo "created $file"
  fi
  chmod 0644 "$file"
done
# PostgreSQL for usage records (postgres.yml): its password, and the DSN the edges use.
if [ ! -s secrets/postgres-password ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >secrets/postgres-password
  echo "created secrets/postgres-password"
fi
if [ ! -s secrets/usage-dsn ]; then
  printf 'postgresql://corral:%s@postgres:5432/corral\n' "$(cat secrets/postgres-password)" \
    >secrets/usage-dsn
  echo "created secrets/usage-dsn"
fi
chmod 0644 secrets/postgres-password secrets/usage-dsn
echo "client API key: $(head -n1 secrets/api-keys)"
