"""Prompt schedule: one text field, a prompt per stretch of the output video."""
import pytest

from dynamicrafter_core.errors import InputError
from dynamicrafter_core.schedule import parse_prompt_schedule, prompt_at


def test_entries_by_bar_or_line_and_the_prompt_in_force_at_each_frame():
    schedule = parse_prompt_schedule("0: a boat on a calm lake | 16: the boat sails toward the sunset\n40:night")
    assert schedule == ((0, "a boat on a calm lake"), (16, "the boat sails toward the sunset"), (40, "night"))
    assert [prompt_at(schedule, f) for f in (0, 15, 16, 39, 40, 1000)] == [
        "a boat on a calm lake", "a boat on a calm lake", "the boat sails toward the sunset",
        "the boat sails toward the sunset", "night", "night"]


def test_a_plain_prompt_is_one_prompt_for_the_whole_video():
    assert parse_prompt_schedule("waves | wind, at 10:30") == ((0, "waves | wind, at 10:30"),)
    assert parse_prompt_schedule("") == ((0, ""),)


@pytest.mark.parametrize("text, message", [
    ("0: a boat | the boat sails", r"entry 2 \('the boat sails'\): expected `FRAME: prompt`"),
    ("8: a boat | 16: sunset", r"entry 1 \('8: a boat'\): the first entry must be for frame 0"),
    ("0: a boat | 16: sunset | 16: night", r"entry 3 \('16: night'\): frame 16 does not come after .* 16"),
    ("0: a | 20: b | 10: c", r"entry 3 .*frame 10 does not come after the previous entry's frame 20"),
])
def test_a_bad_entry_is_named_with_what_was_expected(text, message):
    with pytest.raises(InputError, match=message):
        parse_prompt_schedule(text)
