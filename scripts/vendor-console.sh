#!/usr/bin/env bash
# Fetch the vendored third-party files again from the npm registry and
# check them against their locks (needs npm; the build does not): the
# console's (host/console/vendor.lock) and the AsyncAPI schema the tests
# validate against (tests/fixtures/asyncapi/vendor.lock). With --update,
# write the files and print the sums to put in the lock after a version
# change.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v npm >/dev/null || { echo "vendor-console.sh needs npm (apt-get install npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
for lock in host/console/vendor.lock tests/fixtures/asyncapi/vendor.lock; do
dir="$(dirname "$lock")"
while IFS='|' read -r path package version from sum; do
  (cd "$work" && npm pack --silent "$package@$version" >/dev/null)
  tarball="$(ls "$work"/*.tgz | head -1)"
  mkdir -p "$work/x" && tar xzf "$tarball" -C "$work/x"
  got="$(sha256sum "$work/x/package/$from" | cut -d' ' -f1)"
  if [ "${1:-}" = "--update" ]; then
    cp "$work/x/package/$from" "$dir/$path"
    echo "$path $package@$version sha256 = $got"
  elif [ "$got" != "$sum" ]; then
    echo "$path: $package@$version $from has sha256 $got, the lock says $sum" >&2
    status=1
  else
    echo "$path: $package@$version matches the lock"
  fi
  rm -rf "$work/x" "$tarball"
done < <(awk -F' = ' '
  /^path/ {p=$2} /^package/ {k=$2} /^version/ {v=$2} /^from/ {f=$2}
  /^sha256/ {s=$2; gsub(/"/,"",p); gsub(/"/,"",k); gsub(/"/,"",v); gsub(/"/,"",f); gsub(/"/,"",s); print p "|" k "|" v "|" f "|" s}
' "$lock")
done
exit $status
