"""The demo shop's frontend (Python, Flask): GET /checkout?sku=SKU asks the inventory service
(Rust) for the item's stock and the pricing service (Node.js, which asks the tax service in Java)
for its price, then queues the shipping for the background worker (Celery over Redis).

No tracing code: the Tracelight injector adds the OpenTelemetry Python distro to PYTHONPATH (its
sitecustomize instruments Flask, requests and Celery) and the OTEL_* variables that configure it.
"""
import os
import signal
import sys

import requests
from celery import Celery
from flask import Flask, jsonify, request

INVENTORY_URL = os.environ.get("INVENTORY_URL", "http://inventory:8080")
PRICING_URL = os.environ.get("PRICING_URL", "http://pricing:8070")
PORT = int(os.environ.get("PORT", "8000"))

app = Flask(__name__)
queue = Celery("shop", broker=os.environ.get("BROKER_URL", "redis://queue:6379/0"))


@app.get("/checkout")
def checkout():
    sku = request.args.get("sku", "book")
    stock = requests.get(f"{INVENTORY_URL}/stock", params={"sku": sku}, timeout=10)
    if stock.status_code != 200:
        return jsonify(sku=sku, error=f"inventory answered {stock.status_code}"), 502
    price = requests.get(f"{PRICING_URL}/price", params={"sku": sku}, timeout=10)
    if price.status_code != 200:
        return jsonify(sku=sku, error=f"pricing answered {price.status_code}"), 502
    queue.send_task("shop.ship_order", args=[sku, 1])
    return jsonify(sku=sku, quantity=stock.json()["quantity"], price=price.json())


if __name__ == "__main__":
    # Exit (running atexit handlers, which flush buffered spans) on the kubelet's SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app.run(host="0.0.0.0", port=PORT, threaded=True)
