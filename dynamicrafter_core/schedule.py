"""Prompt schedule: a prompt per stretch of a long video, written in one text field.

    0: a boat on a calm lake | 16: the boat sails toward the sunset

Entries are separated by `|` or by line breaks; each is `FRAME: prompt`, FRAME counted from 0 in the output video.
A prompt holds from its frame until the next entry's. A text with no `FRAME:` entry at all is one prompt for the
whole video, so a plain prompt keeps working (and may contain `|`).
"""
from __future__ import annotations

import re
from typing import Sequence

from .errors import InputError
from .settings import check_prompt

ENTRY = re.compile(r"^\s*(\d+)\s*:(.*)$", re.DOTALL)
SPLIT = re.compile(r"\||\n")

Schedule = Sequence[tuple]  # ((frame, prompt), ...), frames rising from 0


def parse_prompt_schedule(text: str, name: str = "prompt") -> tuple:
    """`text` -> ((frame, prompt), ...), the first at frame 0. Refuses a bad entry, naming it and its number."""
    check_prompt(name, text)
    entries = [e for e in SPLIT.split(text) if e.strip()]
    if not any(ENTRY.match(e) for e in entries):
        return ((0, text.strip()),)
    schedule = []
    for number, entry in enumerate(entries, 1):
        match = ENTRY.match(entry)
        where = f"{name}'s schedule, entry {number} ({entry.strip()!r})"
        if match is None:
            raise InputError(f"{where}: expected `FRAME: prompt`, e.g. `16: the boat sails toward the sunset`; "
                             "separate entries with `|` or a new line")
        frame, prompt = int(match.group(1)), match.group(2).strip()
        if number == 1 and frame != 0:
            raise InputError(f"{where}: the first entry must be for frame 0 (the video's first frame), so that "
                             f"every frame has a prompt; write `0: ...` first")
        if schedule and frame <= schedule[-1][0]:
            raise InputError(f"{where}: frame {frame} does not come after the previous entry's frame "
                             f"{schedule[-1][0]}; list the entries in order of their frames, each frame once")
        schedule.append((frame, prompt))
    return tuple(schedule)


def prompt_at(schedule: Schedule, frame: int) -> str:
    """The prompt in force at `frame` of the output: the last entry at or before it."""
    current = schedule[0][1]
    for start, prompt in schedule:
        if start > frame:
            break
        current = prompt
    return current
