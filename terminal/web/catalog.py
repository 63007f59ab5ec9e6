"""The message catalogue: every visible string, in Korean and English (``terminal/web/i18n/{ko,en}.json``).

Templates call ``t("key")`` (or ``t("key", n=3)`` for ``{n}`` placeholders); Python code passes keys, never
sentences. The verifier's verdict reasons (``verdict.ok``, ``verdict.reason.*``) are written once, in
:mod:`terminal.verifier.messages`, and merged in here. A unit test checks that both catalogues hold the same
keys and that templates use only known ones.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources

from terminal.config import LANGUAGES
from terminal.verifier.messages import MESSAGES

logger = logging.getLogger(__name__)


@cache
def catalogue(language: str) -> dict[str, str]:
    """The flat key → text mapping of ``language``."""
    if language not in LANGUAGES:
        raise KeyError(language)
    text = resources.files("terminal.web").joinpath("i18n", f"{language}.json").read_text("utf-8")
    data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"catalogue {language}.json must be a flat object of strings")
    merged = {key: texts[language] for key, texts in MESSAGES.items() if language in texts}
    merged.update(data)
    return merged


def translate(language: str, key: str, **params: object) -> str:
    """The text for ``key``; a missing key shows as the key itself (and is logged), never a crash."""
    text = catalogue(language).get(key)
    if text is None:
        logger.warning("missing catalogue key %s in %s", key, language)
        return key
    if params:
        try:
            return text.format(**params)
        except (KeyError, IndexError, ValueError):
            logger.warning("bad placeholders for catalogue key %s in %s", key, language)
            return text
    return text
