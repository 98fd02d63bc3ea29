"""Sending a delivery's evidence work: screenshot, then receipt, as one chain."""

from celery import chain

from app.tasks.celery_app import app

SCREENSHOT_TASK = "app.tasks.screenshot_tasks.capture_tracking_screenshot"
RECEIPT_TASK = "app.tasks.receipt_tasks.generate_receipt"


def evidence_chain(delivery_id: int):
    """Screenshot on the `screenshot` queue, then the receipt on `receipt` (the routes choose the queues)."""
    return chain(app.signature(SCREENSHOT_TASK, args=[delivery_id], immutable=True),
                 app.signature(RECEIPT_TASK, args=[delivery_id], immutable=True))


def send_evidence(delivery_ids: list[int]) -> int:
    """Send the chains; call only after the transaction marking them requested has committed."""
    for delivery_id in delivery_ids:
        evidence_chain(delivery_id).apply_async()
    return len(delivery_ids)
