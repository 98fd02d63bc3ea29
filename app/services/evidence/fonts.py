"""The CJK font PDF receipts are drawn with: CJK_FONT_PATH, else the one fontconfig finds for Chinese.

reportlab embeds TrueType outlines only: Noto CJK (fonts-noto-cjk) has CFF outlines and cannot be
used, so fontconfig is asked for a TrueType font. Plain `:lang=zh` is no good either: fontconfig
has no orthography for bare "zh" and answers with DejaVu Sans; `zh-cn` (GB2312 Hanzi) works.
"""

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from reportlab.pdfbase.ttfonts import TTFError, TTFont

from app.core.config import Settings
from app.services.errors import MissingDependencyError

FONTCONFIG_PATTERN = ":lang=zh-cn:fontformat=TrueType"
FONTCONFIG_TIMEOUT = 10
INSTALL_HINT = "install Debian package fonts-wqy-microhei (or fonts-wqy-zenhei), or set CJK_FONT_PATH"
PROBE_CHARACTERS = "送达回证"


def _fontconfig(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=FONTCONFIG_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _fontconfig_font() -> Path | None:
    """fontconfig's best TrueType font for Chinese, if that font really covers Chinese."""
    if shutil.which("fc-match") is None:
        return None
    answer = _fontconfig("fc-match", "-f", "%{file}", FONTCONFIG_PATTERN).strip()
    covering = _fontconfig("fc-list", "-f", "%{file}\n", FONTCONFIG_PATTERN).splitlines()
    return Path(answer) if answer and answer in covering else None


@lru_cache(maxsize=4)
def load_cjk_font(path: Path) -> TTFont:
    """The font at `path` parsed for reportlab (first face of a .ttc), once per process."""
    try:
        font = TTFont(f"CJK-{path.stem}", str(path), subfontIndex=0)
    except (TTFError, OSError) as error:
        raise MissingDependencyError(f"CJK font {path} cannot be embedded ({error}): {INSTALL_HINT}") from None
    if not all(ord(char) in font.face.charToGlyph for char in PROBE_CHARACTERS):
        raise MissingDependencyError(f"font {path} has no Chinese characters: {INSTALL_HINT}")
    return font


def cjk_font_path(settings: Settings) -> Path:
    """CJK_FONT_PATH, else fontconfig's font for Chinese, checked embeddable; else MissingDependencyError."""
    if settings.cjk_font_path:
        if not settings.cjk_font_path.is_file():
            raise MissingDependencyError(f"CJK_FONT_PATH={settings.cjk_font_path} is not a file")
        path = settings.cjk_font_path
    else:
        path = _fontconfig_font()
        if path is None:
            raise MissingDependencyError(f"no CJK font: {INSTALL_HINT}")
    load_cjk_font(path)
    return path
