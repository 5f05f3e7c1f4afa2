"""The demo shop's background worker (Python, Celery): consumes `shop.ship_order` tasks that the
frontend publishes to the queue (Redis) and "ships" the order.

No tracing code: the injected PYTHONPATH loads the OpenTelemetry Python distro, whose Celery
instrumentation carries the trace context in the task's headers from producer to consumer.
Run as `celery -A tasks worker` in this directory.
"""
import os
import time

from celery import Celery

app = Celery("shop", broker=os.environ.get("BROKER_URL", "redis://queue:6379/0"))
app.conf.task_ignore_result = True


@app.task(name="shop.ship_order")
def ship_order(sku, quantity):
    # Stands for the real work of shipping.
    time.sleep(0.01)
    return {"sku": sku, "shipped": quantity}
