"""The tempo a caption states as a number: shared by the caption writer, the tempo conditioning
(text/tempo.py) and the benchmarks that score it. Plain `re`, and `ssmttm.text` imports nothing
heavy on its own, so the caption writer imports it without torch."""

from __future__ import annotations

import re

# "120 BPM", "120 bpm", "120 beats per minute"; group 1 is the number.
STATED_BPM = re.compile(r"(\d+) ?(?:bpm|beats per minute)", re.IGNORECASE)
BPM_RANGE = (20.0, 400.0)  # numbers outside are not tempos anyone plays; they are ignored


def stated_bpm(caption: str) -> float | None:
    """The first tempo a caption states as a number within BPM_RANGE, or None."""
    for match in STATED_BPM.finditer(caption):
        bpm = float(match.group(1))
        if BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
            return bpm
    return None
