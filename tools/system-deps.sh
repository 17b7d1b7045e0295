#!/bin/sh
# The system packages the test suite uses beyond what pip installs from pyproject.toml,
# installed here so that `make test` passes on a fresh machine:
#   chromium  Debian's headless browser (/usr/bin/chromium): tests/test_report.py opens the
#             audit report and the Dagster UI in it and checks what a person would see.
# As root with apt-get (Debian/Ubuntu, CI) they are installed; otherwise this stops with the
# one command to run. Everything else (PostgreSQL, the S3 server, dagster) comes from pip.
set -eu

missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make test: installing system packages:$missing (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$missing >/dev/null
    exit 0
fi
echo "make test needs the system package(s)$missing: run 'sudo apt-get install -y$missing' (Debian/Ubuntu), then make test again" >&2
exit 1
