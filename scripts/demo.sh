#!/usr/bin/env bash
# The main job: build the host and the three reference plugins, start
# plugbus on a fresh plugin directory, send sample orders through HTTP, show
# what each plugin did, and stop cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== building the host and the plugins (the first build takes several minutes)"
cargo build --release -p plugbus
cargo build --profile plugin --target wasm32-wasip1 \
  -p plugbus-plugin-email -p plugbus-plugin-inventory -p plugbus-plugin-analytics
bin="$CARGO_TARGET_DIR/release/plugbus"

work="$(mktemp -d -t plugbus-demo.XXXXXX)"
mkdir -p "$work/plugins"
for p in email inventory analytics; do
  cp "$CARGO_TARGET_DIR/wasm32-wasip1/plugin/plugbus_plugin_$p.wasm" "$work/plugins/$p.wasm"
done
log="$work/plugbus.log"
"$bin" run --plugins "$work/plugins" --data "$work/data" --listen 127.0.0.1:0 2>"$log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for _ in $(seq 1 600); do
  grep -q "plugbus ready" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "plugbus exited early" >&2; exit 1; }
  sleep 0.1
done
url="http://$(grep -o 'listen=[^ ]*' "$log" | head -1 | cut -d= -f2)"
export PLUGBUS_URL="$url"
echo "== plugbus is up at $url with plugins from $work/plugins and its event log in $work/data"
echo "   (while it runs, the console is at $url/console/)"

echo "== publishing two orders (the second asks for more gadgets than are in stock)"
"$bin" publish order.placed '{"order_id":"o-1001","customer":"alice@example.com","items":[{"sku":"widget","qty":2},{"sku":"gadget","qty":1}],"total_cents":4497}'
"$bin" publish order.placed '{"order_id":"o-1002","customer":"bob@example.com","items":[{"sku":"gadget","qty":500}],"total_cents":99900}'

for _ in $(seq 1 100); do
  grep -q "out of stock" "$log" && grep -q "orders=2" "$log" && break
  sleep 0.1
done
echo
echo "== what the plugins did (from the host log)"
grep -E '\[(email|inventory|analytics)\]' "$log" | sed -E 's/^[^ ]+ +[A-Z]+ plugin: //'
echo
echo "== the event log (plugbus log tail)"
"$bin" log tail -n 4 | cut -c1-160
echo
echo "== plugin state: analytics' projection and inventory's stock (plugbus kv list)"
"$bin" kv list analytics
"$bin" kv list inventory
echo
echo "== event sourcing: analytics' state cleared and rebuilt from the log (plugbus replay analytics --from-seq 1 --reset-state)"
"$bin" replay analytics --from-seq 1 --reset-state
for _ in $(seq 1 100); do
  [ "$(grep -c 'analytics\] totals: orders=2' "$log")" -ge 2 ] && break
  sleep 0.1
done
grep -E '\[analytics\] totals' "$log" | sed -E 's/^[^ ]+ +[A-Z]+ plugin: //'
"$bin" kv list analytics
echo
echo "== plugbus plugins"
"$bin" plugins
echo
echo "== stopping"
kill -TERM "$pid"
wait "$pid"
tail -n 2 "$log" | sed -E 's/^[^ ]+ +[A-Z]+ [^ ]+ //'
