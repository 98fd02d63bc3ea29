"""Real files for tests: a small PDF made with pypdf."""

import io

from pypdf import PdfWriter


def pdf_bytes(pages: int = 3) -> bytes:
    """A valid PDF of `pages` blank A4 pages."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
