"""Byte counts as people write them: one table of units for reading sizes ('2GB', '1.5GiB') and
for showing them ('1.2 GB'), so every message, card and page writes a size the same way."""

from __future__ import annotations

UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
SHOWN = ("B", "KB", "MB", "GB", "TB")  # decimal, as the Hub shows file sizes


def human_bytes(n: float | None) -> str:
    """'512 B', '12.3 MB', '1.2 GB'; '-' when unknown."""
    if n is None:
        return "-"
    unit = next((u for u in SHOWN if abs(n) < 1000 * UNITS[u]), SHOWN[-1])
    return f"{n:.0f} B" if unit == "B" else f"{n / UNITS[unit]:.1f} {unit}"


def parse_size(text: str) -> int | None:
    """Bytes from '2000000000', '2GB', '500 MB' or '1.5GiB' (any case); None if it is not a size."""
    t = text.strip().lower()
    for unit in sorted(UNITS, key=len, reverse=True):  # 'kib' before 'b'
        if t.endswith(unit.lower()):
            t = t[: -len(unit)].strip()
            try:
                return int(float(t) * UNITS[unit])
            except ValueError:
                return None
    try:
        return int(t)
    except ValueError:
        return None
