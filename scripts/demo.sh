#!/usr/bin/env bash
# The main job: build the host and the reference plugins, start plugbus on
# a fresh plugin directory, send sample orders through HTTP, show what each
# plugin did (the choreography of email, inventory and analytics, and the
# saga of order-saga and payment with its timeout), and stop cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== building the host and the plugins (the first build takes several minutes)"
cargo build --release -p plugbus
cargo build --profile plugin --target wasm32-wasip1 \
  -p plugbus-plugin-email -p plugbus-plugin-inventory -p plugbus-plugin-analytics \
  -p plugbus-plugin-payment -p plugbus-plugin-order-saga
bin="$CARGO_TARGET_DIR/release/plugbus"

work="$(mktemp -d -t plugbus-demo.XXXXXX)"
mkdir -p "$work/plugins"
for p in email inventory analytics payment order-saga; do
  cp "$CARGO_TARGET_DIR/wasm32-wasip1/plugin/plugbus_plugin_${p//-/_}.wasm" "$work/plugins/$p.wasm"
done
# The saga gives a payment 2 s; the payment never answers for carol.
printf '[config]\npayment_timeout_ms = "2000"\n' >"$work/plugins/order-saga.toml"
printf '[config]\nsilent_customers = "carol@example.com"\n' >"$work/plugins/payment.toml"
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

echo "== publishing three orders (the second asks for more gadgets than are in stock; carol's payment never answers)"
"$bin" publish order.placed '{"order_id":"o-1001","customer":"alice@example.com","items":[{"sku":"widget","qty":2},{"sku":"gadget","qty":1}],"total_cents":4497}'
"$bin" publish order.placed '{"order_id":"o-1002","customer":"bob@example.com","items":[{"sku":"gadget","qty":500}],"total_cents":99900}'
"$bin" publish order.placed '{"order_id":"o-1003","customer":"carol@example.com","items":[{"sku":"widget","qty":1}],"total_cents":1499}'

echo "   (order-saga's payment timeout is a timer, kept in the store: the third order ends in 2 s)"
for _ in $(seq 1 100); do
  grep -q "out of stock" "$log" && grep -q "orders=3" "$log" && grep -q "o-1003: payment_timeout" "$log" && break
  sleep 0.1
done
echo
echo "== what the plugins did (from the host log)"
grep -E '\[(email|inventory|analytics|payment|order-saga)\]' "$log" | sed -E 's/^[^ ]+ +[A-Z]+ plugin: //'
echo
echo "== the event log (plugbus log tail)"
"$bin" log tail -n 4 | cut -c1-160
echo
echo "== plugin state: analytics' projection, inventory's stock, payment's refunds (plugbus kv list)"
"$bin" kv list analytics
"$bin" kv list inventory
"$bin" kv list payment
echo
echo "== event sourcing: analytics' state cleared and rebuilt from the log (plugbus replay analytics --from-seq 1 --reset-state)"
"$bin" replay analytics --from-seq 1 --reset-state
for _ in $(seq 1 100); do
  [ "$(grep -c 'analytics\] totals: orders=3' "$log")" -ge 2 ] && break
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
