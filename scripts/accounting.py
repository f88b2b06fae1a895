"""Every order accounted for, measured: the reference order flow on the real
binary, every default and the limits users set, on the embedded store and
on both brokers. For each scenario it posts N orders (CloudEvents batches of
1,000, each order its own subject), waits until every plugin is done, and
prints how long that took and what the log, the dead letters, analytics'
state and `plugbus audit` say. Run by scripts/accounting.sh (which builds
the binary and the plugins and finds the servers)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN, PLUGINS, NATS = sys.argv[1], sys.argv[2], sys.argv[3]
N = int(os.environ.get("PLUGBUS_ACCOUNTING_ORDERS", "100000"))
WAIT = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def post_batch(url, events):
    req = urllib.request.Request(
        url + "/v1/events",
        data=json.dumps(events).encode(),
        headers={"content-type": "application/cloudevents-batch+json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 202, r.status


def orders(n):
    for start in range(0, n, 1000):
        yield [
            {
                "specversion": "1.0",
                "id": f"o-{i}",
                "source": "/shop",
                "type": "order.placed",
                "subject": f"o-{i}",
                "data": {
                    "order_id": f"o-{i}",
                    "customer": "a@b.c",
                    "items": [{"sku": "widget", "qty": 1}],
                    "total_cents": 100,
                },
            }
            for i in range(start, min(n, start + 1000))
        ]


class Server:
    """A broker on loopback, in a temp dir, stopped by its pid."""

    def __init__(self, kind, work):
        port = free_port()
        d = os.path.join(work, kind)
        os.makedirs(d)
        if kind == "redis":
            cmd = ["redis-server", "--port", str(port), "--dir", d, "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always"]
            self.url = f"redis://127.0.0.1:{port}"
        else:
            cmd = [NATS, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", d]
            self.url = f"nats://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{kind} did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wait(url, started, seen, done):
    """Poll the plugins until done(seen(plugins)); a host that lost events
    never gets there, so also until nothing moves and nothing is left to do
    for 5 s. Returns when it was done, or when it last moved."""
    last, still, moved = None, 0, time.monotonic()
    while time.monotonic() - started < WAIT:
        plugins = get(url + "/v1/plugins")["plugins"]
        now = seen(plugins)
        if done(now):
            return time.monotonic()
        if now != last:
            last, still, moved = now, 0, time.monotonic()
        elif all(p.get("lag") == 0 for p in plugins):
            still += 1
            if still >= 100:
                break
        time.sleep(0.05)
    return moved


def settled_audit(url):
    """`plugbus audit` once every plugin is checked (on NATS a busy plugin
    is not: it is asked again for up to 30 s)."""
    until = time.monotonic() + 30
    while True:
        audit = subprocess.run([BIN, "audit", "--url", url], capture_output=True, text=True)
        if "unknown" not in audit.stdout or time.monotonic() > until:
            return audit
        time.sleep(0.2)


def run(name, work, manifest="", broker=None):
    d = os.path.join(work, name.replace(" ", "-").replace(",", ""))
    os.makedirs(os.path.join(d, "plugins"))
    for p in ["email", "inventory", "analytics"]:
        shutil.copy(os.path.join(PLUGINS, f"plugbus_plugin_{p}.wasm"), os.path.join(d, "plugins", f"{p}.wasm"))
    if manifest:
        with open(os.path.join(d, "plugins", "inventory.toml"), "w") as f:
            f.write(manifest)
    port = free_port()
    args = [BIN, "run", "--plugins", os.path.join(d, "plugins"), "--listen", f"127.0.0.1:{port}"]
    server = None
    if broker:
        server = Server(broker, d)
        args += ["--broker", server.url]
    else:
        args += ["--data", os.path.join(d, "data")]
    log = open(os.path.join(d, "host.log"), "w")
    host = subprocess.Popen(args, stderr=log, stdout=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                get(url + "/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        started = time.monotonic()
        for batch in orders(N):
            post_batch(url, batch)
        handled = lambda ps: {p["name"]: p["handled"] for p in ps}
        moved = wait(url, started, handled,
                     lambda now: now.get("inventory", 0) >= N and now.get("analytics", 0) >= N)
        # Every follow-up is in the log with inventory's acks; email is done
        # once it handled the orders and the insufficient ones.
        events, frm = [], 1
        while True:
            page = get(f"{url}/v1/log?from={frm}&limit=1000")["events"]
            if not page:
                break
            events += page
            frm = page[-1]["sequence"] + 1
        insufficient = sum(1 for e in events if e["type"] == "inventory.insufficient")
        moved = max(moved, wait(url, started, lambda ps: handled(ps)["email"],
                                lambda email: email >= N + insufficient))
        # Until the last progress: a host that lost events is not timed on
        # the wait that found it idle.
        seconds = moved - started
        placed = {e["id"] for e in events if e["type"] == "order.placed"}
        follow = {}
        for e in events:
            if e["type"].startswith("inventory."):
                follow[e.get("causationid")] = follow.get(e.get("causationid"), 0) + 1
        missing = sum(1 for o in placed if o not in follow)
        twice = sum(1 for c in follow.values() if c != 1)
        dead = sum(len(get(f"{url}/v1/dead/{p}")["dead_letters"]) for p in ["email", "inventory", "analytics"])
        counted = get(url + "/v1/plugins/analytics/kv/orders")["value"]
        audit = settled_audit(url)
        lags = {p["name"]: p.get("lag") for p in get(url + "/v1/plugins")["plugins"]}
        lag = ", ".join(f"{k} {v}" for k, v in sorted(lags.items()))
        audit_says = f"exit {audit.returncode}"
        print(f"| {name} | {len(placed):,} | {seconds:.1f} | {len(placed) / seconds:,.0f} | {missing} | {twice} | {dead} | {counted} | {audit_says} | {lag} |", flush=True)
        if audit.returncode != 0 or "unknown" in audit.stdout:
            print(audit.stdout, audit.stderr, file=sys.stderr)
    finally:
        host.terminate()
        host.wait()
        if server:
            server.stop()


def main():
    work = tempfile.mkdtemp(prefix="plugbus-accounting-")
    print(f"{N:,} orders per scenario, CloudEvents batches of 1,000, every order its own subject; three reference plugins\n")
    print("| scenario | orders | seconds until every plugin is done | orders/s | orders without a follow-up | orders with two | dead letters | analytics' count | plugbus audit | lag when done |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    scenarios = [
        ("embedded, every default", {}),
        ("embedded, inventory publish limit 2,000/s", {"manifest": "[publish]\nrate_events_per_s_max = 2000\n"}),
        ("embedded, inventory concurrency 4, strict", {"manifest": 'concurrency = 4\n[retry]\nordering = "strict"\n'}),
        ("Redis, every default", {"broker": "redis"}),
        ("NATS, every default", {"broker": "nats"}),
    ]
    # PLUGBUS_ACCOUNTING_ONLY: run only the scenarios whose name has it.
    only = os.environ.get("PLUGBUS_ACCOUNTING_ONLY", "")
    try:
        for name, how in scenarios:
            if only in name:
                run(name, work, **how)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
