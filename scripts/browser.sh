#!/usr/bin/env bash
# Debian's headless Chromium and its ChromeDriver, for the JupyterLab browser test (tests/test_browser.py).
#
#   scripts/browser.sh install   # apt-get install chromium chromium-driver, if they are missing
#   scripts/browser.sh status    # print both versions; non-zero exit if either is missing
#
# Needs root for apt-get (as scripts/slurm_cluster.sh does).
set -euo pipefail

log() { echo "[browser] $*" >&2; }

present() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }

case "${1:-status}" in
  install)
    # Two test suites at once install once: the second waits for the first (and for apt's lock).
    exec 9>/tmp/studylib-apt.lock
    flock 9
    if ! present; then
      log "installing chromium and chromium-driver with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get -o DPkg::Lock::Timeout=600 update -qq
      apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    fi
    chromium --version && chromedriver --version
    ;;
  status)
    present && chromium --version && chromedriver --version
    ;;
  *)
    echo "usage: $0 install|status" >&2
    exit 2
    ;;
esac
