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
