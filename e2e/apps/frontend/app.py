"""The demo shop's frontend (Python, Flask): GET /checkout?sku=SKU asks the inventory service for
the item's stock and answers with it.

No tracing code: the Tracelight injector adds the OpenTelemetry Python distro to PYTHONPATH (its
sitecustomize instruments Flask and requests) and the OTEL_* variables that configure it.
"""
import os
import signal
import sys

import requests
from flask import Flask, jsonify, request

INVENTORY_URL = os.environ.get("INVENTORY_URL", "http://inventory:8080")
PORT = int(os.environ.get("PORT", "8000"))

app = Flask(__name__)


@app.get("/checkout")
def checkout():
    sku = request.args.get("sku", "book")
    stock = requests.get(f"{INVENTORY_URL}/stock", params={"sku": sku}, timeout=10)
    if stock.status_code != 200:
        return jsonify(sku=sku, error=f"inventory answered {stock.status_code}"), 502
    return jsonify(sku=sku, quantity=stock.json()["quantity"])


if __name__ == "__main__":
    # Exit (running atexit handlers, which flush buffered spans) on the kubelet's SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app.run(host="0.0.0.0", port=PORT, threaded=True)
