#!/usr/bin/env bash
# Debian packages the full test matrix needs beyond Python itself:
#   libmariadb-dev + pkg-config: to build mysqlclient (the MariaDB driver)
#   libodbc2: unixODBC, which mssql-django's pyodbc needs to import (SQL Server compile tests)
#   chromium + chromium-driver: the admin's browser tests (Playwright drives Debian's Chromium)
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail
pkgs=(libmariadb-dev pkg-config libodbc2 chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps: all present (${pkgs[*]})"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system-deps: installing ${missing[*]} (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: done"
