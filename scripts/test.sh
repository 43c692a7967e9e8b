#!/usr/bin/env bash
# Installs everything the tests need into .venv, then runs lint, types and tests.
# Usage: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
# The end-to-end milter tests run private Postfix instances on loopback
# (tests/support/postfix.py): install Postfix when it is missing. Debian's
# package asks which system configuration to write: "No configuration", so
# the system instance stays unconfigured; our instances bring their own.
if ! command -v postfix >/dev/null 2>&1 && [ ! -x /usr/sbin/postfix ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing postfix"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
    # Without systemd (containers) the package's init script may have
    # started it: be tidy, no system Postfix on port 25.
    if /usr/sbin/postfix status >/dev/null 2>&1; then
      /usr/sbin/postfix stop >/dev/null 2>&1 || true
    fi
  else
    echo "postfix is missing and cannot be installed here (needs root and apt-get):" \
      "its end-to-end tests will be skipped, or fail when CI is set" >&2
  fi
fi
# The report's test opens its page in headless Chromium; the lifecycle and
# report tests move the clock with libfaketime (never with sleeps); the
# PostgreSQL tests run a private server from Debian's binaries in
# /usr/lib/postgresql/*/bin (tests/support/postgres.py); the antivirus tests
# a private clamd (tests/support/clamd.py, clamav-daemon). Debian's packages,
# installed when missing, as Postfix above.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/clamd ] || command -v clamd >/dev/null 2>&1 || missing+=(clamav-daemon)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
    # Debian's postgresql creates a system cluster ("main") and, without
    # systemd (containers), its init script may start it: stop it, and keep
    # it from starting at boot, so that nothing listens on 5432. The tests
    # only use their private instances, on random ports.
    if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
      pg_lsclusters -h 2>/dev/null | while read -r version cluster _; do
        pg_ctlcluster --force "$version" "$cluster" stop >/dev/null 2>&1 || true
        if [ -f "/etc/postgresql/$version/$cluster/start.conf" ]; then
          echo manual >"/etc/postgresql/$version/$cluster/start.conf"
        fi
      done
    fi
    # Debian's clamav-daemon (and the clamav-freshclam it pulls in) may start
    # a system clamd and a freshclam that downloads the signatures from the
    # network: stop both and keep them from starting at boot. The tests run
    # their own clamd, with a signature file they write, and no network.
    if [[ " ${missing[*]} " == *" clamav-daemon "* ]]; then
      for service in clamav-freshclam clamav-daemon; do
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
          systemctl disable --now "$service" >/dev/null 2>&1 || true
        else
          service "$service" stop >/dev/null 2>&1 || true
          update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
      done
    fi
  else
    echo "${missing[*]} missing and cannot be installed here (needs root and apt-get):" \
      "the tests using them will be skipped, or fail when CI is set" >&2
  fi
fi
echo "== pytest"
.venv/bin/pytest "$@"
