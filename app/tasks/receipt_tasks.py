"""PDF delivery receipts (送达回证) on the `receipt` queue."""

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.services.evidence.receipt import generate_receipt as issue_receipt
from app.tasks.base import EvidenceTask
from app.tasks.celery_app import app
from app.tasks.policies import CRITICAL_POLICY


@app.task(base=EvidenceTask, evidence_step="receipt", **CRITICAL_POLICY)
def generate_receipt(delivery_id: int, regenerate: bool = False) -> dict:
    """Issue the delivery's PDF receipt from its newest screenshot (kept if one exists, unless regenerate)."""
    return issue_receipt(SessionFactory, get_settings().files_path, delivery_id, regenerate)
