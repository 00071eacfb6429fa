"""``--log-format json``: one JSON object per line, for log collectors.

Only the layout changes: the messages are the text format's, with the same secrets masked the same
way (vlm/logsafe.py), and JSON escaping (ASCII only) keeps every record on one line.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from .logsafe import SafeFormatter


class JsonFormatter(SafeFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.mask(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def use_log_format(log_format: str, *secrets: str | None) -> None:
    """Switch the root logger's handlers to ``log_format`` ('text' leaves them as they are), masking ``secrets``."""
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter(secrets))
