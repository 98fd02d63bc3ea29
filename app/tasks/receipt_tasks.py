"""PDF delivery receipts (送达回证) on the `receipt` queue."""

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.tasks.base import EvidenceTask
from app.tasks.celery_app import app
from app.tasks.policies import CRITICAL_POLICY


@app.task(base=EvidenceTask, evidence_step="receipt", **CRITICAL_POLICY)
def generate_receipt(delivery_id: int, regenerate: bool = False) -> dict:
    """Issue the delivery's PDF receipt from its newest screenshot (kept if one exists, unless regenerate)."""
    from app.services.evidence.receipt import generate_receipt as issue_receipt  # here: reportlab, pypdf, PIL (0.3 s)
    # are loaded by the worker that runs it, not by every beat and CLI start that imports the tasks

    return issue_receipt(SessionFactory, get_settings().files_path, delivery_id, regenerate)
