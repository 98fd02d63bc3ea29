"""Delivery evidence: the tracking screenshot and the PDF receipt (回证) of a delivered delivery."""
