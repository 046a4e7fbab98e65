#!/usr/bin/env bash
# Installs what uma needs to build and test on Debian 12 (as root), skipping what is already there.
#   tools/setup.sh          build dependencies only
#   tools/setup.sh --tests  plus what the test suite needs (node reference packages, chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config libhwy-dev libpcre2-dev nlohmann-json3-dev libcli11-dev
          libfmt-dev libcpp-httplib-dev libcurl4-openssl-dev libssl-dev libgtest-dev libgmock-dev)
if [[ "${1:-}" == "--tests" ]]; then
  packages+=(chromium)
  # Node.js may come from Debian (nodejs + npm) or NodeSource (nodejs bundling npm): install only when absent.
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "${1:-}" == "--tests" ]]; then
  # Reference implementations the tests compare against (HF tokenizers, @huggingface/jinja, openai, playwright).
  for dir in tests/node tests/server; do
    if [[ -f "$dir/package-lock.json" ]]; then
      npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    fi
  done
fi
