#!/usr/bin/env python3
"""The order flow as a careful team writes it by hand, the peer of the
order-flow rows (`fanout/orderflow.rs`): Python services on Redis Streams
with consumer groups, as the event-driven textbooks set them up, tuned.

    orderflow_peer.py URL email|inventory|analytics   run one service
    orderflow_peer.py URL publish ORDERS_FILE          XADD the orders

Streams: `orders` (the orders, one entry each with the CloudEvent's data)
and `inventory` (inventory's follow-ups, `reserved` or `insufficient`).
Each service is its own process and its own consumer group, reads 64
entries at a time (blocking), and writes a batch's effects and its acks in
one MULTI/EXEC (redis-py with hiredis): state in hashes, follow-ups with
XADD. The services keep their counts in Redis (`email`, `inventory`,
`analytics` hashes), which the benchmark reads to know they are done.
"""

import json
import sys

import redis

READ = 64
BLOCK_MS = 1000
# The starting stock per SKU, as the reference inventory plugin's
# `default_stock`.
DEFAULT_STOCK = 100


def group(r, stream, name):
    try:
        r.xgroup_create(stream, name, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def entries(reply):
    for stream, items in reply or []:
        for entry_id, fields in items:
            yield stream, entry_id, fields


def inventory(r):
    group(r, "orders", "inventory")
    levels = {}
    while True:
        reply = r.xreadgroup("inventory", "c1", {"orders": ">"}, count=READ, block=BLOCK_MS)
        batch = [(i, json.loads(f[b"data"])) for _, i, f in entries(reply)]
        if not batch:
            continue
        skus = sorted({item["sku"] for _, o in batch for item in o["items"]} - levels.keys())
        if skus:
            for sku, kept in zip(skus, r.hmget("stock", skus)):
                levels[sku] = int(kept) if kept is not None else DEFAULT_STOCK
        p = r.pipeline(transaction=True)
        changed = {}
        short = 0
        for _, o in batch:
            lacking = next((i for i in o["items"] if levels[i["sku"]] < i["qty"]), None)
            if lacking is None:
                for item in o["items"]:
                    levels[item["sku"]] -= item["qty"]
                    changed[item["sku"]] = levels[item["sku"]]
                follow = {"type": "inventory.reserved", "order_id": o["order_id"],
                          "customer": o["customer"], "items": o["items"]}
            else:
                short += 1
                follow = {"type": "inventory.insufficient", "order_id": o["order_id"],
                          "customer": o["customer"], "sku": lacking["sku"],
                          "wanted": lacking["qty"], "available": levels[lacking["sku"]]}
            p.xadd("inventory", {"data": json.dumps(follow)})
        if changed:
            p.hset("stock", mapping=changed)
        p.hincrby("counts", "inventory", len(batch))
        p.hincrby("counts", "insufficient", short)
        p.xack("orders", "inventory", *[i for i, _ in batch])
        p.execute()


def email(r, log):
    group(r, "orders", "email")
    group(r, "inventory", "email")
    while True:
        reply = r.xreadgroup("email", "c1", {"orders": ">", "inventory": ">"}, count=READ,
                             block=BLOCK_MS)
        acks = {"orders": [], "inventory": []}
        for stream, entry_id, fields in entries(reply):
            event = json.loads(fields[b"data"])
            name = stream.decode()
            if name == "orders":
                log.write(f"to {event['customer']}: your order {event['order_id']} is confirmed, "
                          f"total {event['total_cents'] // 100}.{event['total_cents'] % 100:02}\n")
            elif event["type"] == "inventory.insufficient":
                log.write(f"to {event['customer']}: sorry, order {event['order_id']} is delayed: "
                          f"{event['sku']} is out of stock\n")
            # A reserved follow-up is read and acked without a word.
            acks[name].append(entry_id)
        handled = len(acks["orders"]) + len(acks["inventory"])
        if not handled:
            continue
        p = r.pipeline(transaction=True)
        p.hincrby("counts", "email", handled)
        for name, ids in acks.items():
            if ids:
                p.xack(name, "email", *ids)
        p.execute()


def analytics(r):
    group(r, "orders", "analytics")
    while True:
        reply = r.xreadgroup("analytics", "c1", {"orders": ">"}, count=READ, block=BLOCK_MS)
        batch = [(i, json.loads(f[b"data"])) for _, i, f in entries(reply)]
        if not batch:
            continue
        p = r.pipeline(transaction=True)
        p.hincrby("analytics", "orders", len(batch))
        p.hincrby("analytics", "revenue_cents", sum(o["total_cents"] for _, o in batch))
        p.hincrby("counts", "analytics", len(batch))
        p.xack("orders", "analytics", *[i for i, _ in batch])
        p.execute()


def publish(r, path):
    """XADD the orders of `path` (one CloudEvent batch of JSON per line), a
    batch per pipeline, as the host's ingress takes a batch per request."""
    with open(path) as f:
        for line in f:
            p = r.pipeline(transaction=False)
            for event in json.loads(line):
                p.xadd("orders", {"data": json.dumps(event["data"])})
            p.execute()


def main():
    url, role = sys.argv[1], sys.argv[2]
    r = redis.Redis.from_url(url)
    if role == "inventory":
        inventory(r)
    elif role == "email":
        with open(sys.argv[3] if len(sys.argv) > 3 else "/dev/null", "w", buffering=1 << 16) as log:
            email(r, log)
    elif role == "analytics":
        analytics(r)
    elif role == "publish":
        publish(r, sys.argv[3])
    else:
        sys.exit(f"unknown role {role}: email, inventory, analytics or publish")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
