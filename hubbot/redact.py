"""Secrets out of everything written: one registry of the tokens this process knows (the
server's HF_TOKEN, the webhook secret, each signed-in user's token) and the two boundaries
that apply it, the job store's writes and every log record.

Hub errors may quote request headers, so a token can surface in any message; blanking it where
text is written, rather than where it is produced, catches paths nobody thought of. Token
shapes (`hf_...`, `Bearer ...`) are blanked too, for tokens this process was never told about.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
MIN_SECRET = 6  # shorter strings would blank ordinary words
PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hub tokens: hf_ and 34 letters or digits
    re.compile(r"(?i)(bearer\s+)(?!<)[^\s'\",;}]+"),
    re.compile(r"(?i)(x-webhook-secret['\"]?\s*[:=]\s*['\"]?)[^\s'\",;}]+"),
)

_secrets: set[str] = set()
_lock = threading.Lock()


def remember(*secrets: str | None) -> None:
    """Add secrets to blank from now on (None and empty values are ignored)."""
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET)


def redact(text: str) -> str:
    """`text` with every known secret and every token-shaped string replaced by ***."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside plain data (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


_formatter = logging.Formatter()
_installed = False


def install_log_redaction() -> None:
    """Make every log record of this process carry redacted text (message, arguments and any
    traceback), whichever logger or handler it goes to. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # a malformed format string: keep the raw text, redacted
            record.msg, record.args = redact(str(record.msg)), None
        else:
            if redact(text) != text:
                _blank(record, text)
        if record.exc_info:
            record.exc_text = redact(_formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)


def _blank(record: logging.LogRecord, text: str) -> None:
    """Blank the secrets of a record whose message `text` holds one. Its arguments stay arguments
    (numbers numbers), each redacted: formatters that unpack them, as uvicorn's access log does,
    failed on every line when a record carried its text alone; if the parts do not add up to a
    clean message, the redacted text alone."""
    def clean(value: Any) -> Any:
        return value if value is None or isinstance(value, (int, float)) else redact(str(value))

    record.msg = redact(str(record.msg))
    if isinstance(record.args, dict):
        record.args = {k: clean(v) for k, v in record.args.items()}
    elif record.args:
        record.args = tuple(clean(v) for v in record.args)
    try:
        clean_parts = redact(record.getMessage()) == record.getMessage()
    except Exception:  # an argument's type changed under a format that needs it (%x of an object)
        clean_parts = False
    if not clean_parts:
        record.msg, record.args = redact(text), None
