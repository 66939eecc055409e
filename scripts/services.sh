#!/usr/bin/env bash
# Starts the local RabbitMQ and PostgreSQL when they are installed but not running, and waits
# until each answers. Safe to run any number of times. No Docker needed.
set -euo pipefail

wait_for() { # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then
      echo "services: $name did not answer within ${seconds}s" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "services: $name is up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if command -v rabbitmq-server >/dev/null 2>&1; then
  if ! port_open 5672; then
    echo "services: starting rabbitmq"
    rabbitmq-server -detached || true
  fi
  wait_for rabbitmq 90 port_open 5672
  # The port opens before the broker accepts logins; ask it properly when the tool is there.
  if command -v rabbitmq-diagnostics >/dev/null 2>&1; then
    wait_for "rabbitmq (ping)" 90 rabbitmq-diagnostics -q ping
  fi
fi

if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
  if ! port_open 5432; then
    echo "services: starting postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
  wait_for postgresql 60 port_open 5432
fi

# The dashboard's browser tests drive Debian's headless chromium through chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "services: installing chromium and chromium-driver"
    apt-get install -y chromium chromium-driver >/dev/null \
      || { apt-get update >/dev/null && apt-get install -y chromium chromium-driver >/dev/null; }
  else
    echo "services: chromium and chromedriver are missing and apt-get is not here" >&2
  fi
fi
