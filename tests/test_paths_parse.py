"""Parsing VLM answers without eval: the real failure modes, each repaired or failed by name."""

from __future__ import annotations

import pytest

from maniflow.paths.parse import parse_hamster, parse_peek, parse_points_json
from maniflow.paths.protocol import crop_to_frame, format_hamster_answer, format_peek_answer, frame_to_crop, reply_text


def test_well_formed_answer_with_gripper_tags():
    text = ("<ans>[(0.25, 0.32), (0.32, 0.17), <action>Open Gripper</action>, (0.74, 0.21), "
            "<action>Close Gripper</action>, (0.5, 0.5)]</ans>")
    p = parse_hamster(text)
    assert p.status == "ok" and p.repairs == []
    # The state starts closed; a tag sets the point just before it and the following ones.
    assert p.points == [(0.25, 0.32, 0), (0.32, 0.17, 1), (0.74, 0.21, 0), (0.5, 0.5, 0)]


@pytest.mark.parametrize("text, points, repair", [
    ("<ans>[<action>Open Gripper</action>, (0.1, 0.2), (0.3, 0.4)]</ans>",
     [(0.1, 0.2, 1), (0.3, 0.4, 1)], "action tag before the first point taken as the initial state"),
    ("<ans>[(0.1, 0.2), (0.3, 0.4), ...]</ans>", [(0.1, 0.2, 0), (0.3, 0.4, 0)], "literal '...' ignored"),
    ("<ans>[(0.1, 0.2), (0.3, 0.4)", [(0.1, 0.2, 0), (0.3, 0.4, 0)], "answer cut off before </ans>"),
    ("<ans>[(0.1, 0.2), (0.3, 0.4), (0.55, 0.", [(0.1, 0.2, 0), (0.3, 0.4, 0)], "cut-off last point dropped"),
    ("<ans>[(1.08, -0.03), (0.3, 0.4)]</ans>", [(1.0, 0.0, 0), (0.3, 0.4, 0)], "coordinates outside [0, 1] clipped"),
    ("<ans>[(0.1, 0.2), (120, 85)]</ans>", [(0.1, 0.2, 0)], "points far outside [0, 1] dropped"),
    ("The gripper should go [(0.1, 0.2), (0.3, 0.4)]", [(0.1, 0.2, 0), (0.3, 0.4, 0)],
     "no <ans> tag; points read from the whole answer"),
    ("<ans>[[0.1, 0.2], [0.3, 0.4]]</ans>", [(0.1, 0.2, 0), (0.3, 0.4, 0)], "[x, y] pairs read as points"),
    ("<ans>[(0.1, 0.2), then (0.3, 0.4)]</ans>", [(0.1, 0.2, 0), (0.3, 0.4, 0)],
     "stray text inside the answer ignored"),
])
def test_real_failure_modes_are_repaired_and_named(text, points, repair):
    p = parse_hamster(text)
    assert p.status == "repaired"
    assert p.points == points
    assert repair in p.repairs


@pytest.mark.parametrize("text, reason", [
    ("", "empty answer"),
    ("   \n", "empty answer"),
    ("I cannot see a robot in this image.", "no <ans> tag and no points"),
    ("<ans>[]</ans>", "no points in answer"),
    ("<ans>[(120, 80), (300, 200)]</ans>", "no points in answer"),
])
def test_unusable_answers_fail_with_a_reason(text, reason):
    p = parse_hamster(text)
    assert p.status == "failed" and p.points == [] and p.reason == reason


def test_answer_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    text = f"<ans>[__import__('pathlib').Path({str(marker)!r}).touch(), (0.1, 0.2)]</ans>"
    p = parse_hamster(text)
    assert not marker.exists()
    assert p.points == [(0.1, 0.2, 0)] and "stray text inside the answer ignored" in p.repairs


def test_oracle_answer_format_round_trips_gripper_states():
    path = [(0.1, 0.9, 1), (0.2, 0.8, 1), (0.3, 0.7, 0), (0.4, 0.6, 0), (0.5, 0.5, 1), (0.6, 0.4, 0)]
    text = format_hamster_answer(path)
    assert parse_hamster(text).points == path and parse_hamster(text).status == "ok"
    assert format_hamster_answer([(0.5, 0.5, 0)]) == "<ans>[(0.5000, 0.5000)]</ans>"


def test_peek_answer_draws_the_trajectory_and_keeps_the_mask():
    text = "TRAJECTORY: <ans>[(0.25, 0.32), (0.5, 0.75)]</ans> MASK: <ans>[(0.9, 0.9), (0.8, 0.8)]</ans>"
    p = parse_peek(text)
    assert p.status == "ok" and p.points == [(0.25, 0.32, None), (0.5, 0.75, None)]
    assert p.mask == [(0.9, 0.9), (0.8, 0.8)] and p.extras()["mask"] == [[0.9, 0.9], [0.8, 0.8]]
    # In the store the mask is mapped from the 384x384 crop to the frame, like the path.
    from maniflow.paths.store import parse_answer

    framed = parse_answer(text, "peek", 320, 240)
    assert [c for p in framed.mask for c in p] == pytest.approx([(40 + 0.9 * 240) / 320, 0.9,
                                                                 (40 + 0.8 * 240) / 320, 0.8])
    p = parse_peek("<ans>[(0.25, 0.32), <action>Open Gripper</action>, (0.5, 0.75)]</ans>")
    assert p.status == "repaired" and p.points == [(0.25, 0.32, None), (0.5, 0.75, None)]
    assert "no TRAJECTORY label; first <ans> used" in p.repairs
    assert parse_peek(format_peek_answer([(0.1, 0.2, None)])).points == [(0.1, 0.2, None)]


def test_peek_crop_coordinates_map_to_the_full_frame():
    # 320x240: the centred square crop is x 40..280; REFERENCE: u = 40 + x * 240, v = y * 240.
    assert crop_to_frame([(0.0, 0.0, None), (1.0, 1.0, None), (0.5, 0.25, None)], 320, 240) == [
        (40 / 320, 0.0, None), (280 / 320, 1.0, None), (160 / 320, 60 / 240, None)]
    # Portrait frames crop vertically.
    assert crop_to_frame([(0.5, 0.0, None)], 240, 320) == [(0.5, 40 / 320, None)]
    pts = [(0.3, 0.6, None), (0.8, 0.1, None)]
    back = crop_to_frame(frame_to_crop(pts, 320, 240), 320, 240)
    assert [c for p in back for c in p[:2]] == pytest.approx([c for p in pts for c in p[:2]])


def test_reply_content_as_list_of_parts_or_string():
    hamster = {"choices": [{"message": {"content": [{"type": "text", "text": "<ans>[(0.1, 0.2)]</ans>"}]}}]}
    openai = {"choices": [{"message": {"content": "<ans>[(0.1, 0.2)]</ans>"}}]}
    assert reply_text(hamster) == reply_text(openai) == "<ans>[(0.1, 0.2)]</ans>"
    with pytest.raises(ValueError, match="no choices"):
        reply_text({"error": "boom"})


def test_other_coordinate_conventions_are_rescaled_not_dropped():
    from maniflow.paths.store import parse_answer

    text = "<ans>[(250, 320), <action>Open Gripper</action>, (740, 210)]</ans>"
    assert parse_hamster(text).status == "failed"  # read as 0-1 they are far out of range
    thousand = parse_answer(text, "hamster", 320, 240, "thousand")
    assert thousand.status == "ok" and thousand.points == [(0.25, 0.32, 1), (0.74, 0.21, 1)]
    pixel = parse_answer("<ans>[(160, 120), (320, 0)]</ans>", "hamster", 320, 240, "pixel")
    assert pixel.points == [(0.5, 0.5, 0), (1.0, 0.0, 0)]
    # PEEK pixels are of the 384x384 crop: its centre is the frame's centre.
    peek = parse_answer("TRAJECTORY: <ans>[(192, 192)]</ans>", "peek", 320, 240, "pixel")
    assert peek.points == [(0.5, 0.5, None)]


QWEN3 = ('```json\n[\n  {"point_2d": [250, 320], "label": "gripper"},\n  {"point_2d": [740, 210], '
         '"label": "red \\"bell\\""}\n]\n```')


def test_qwen_json_point_lists_are_a_declared_format_with_labels_and_no_gripper_states():
    from maniflow.paths.store import parse_answer

    p = parse_points_json(QWEN3, (1000.0, 1000.0))
    assert p.status == "ok" and p.repairs == []
    assert p.points == [(0.25, 0.32, None), (0.74, 0.21, None)]  # no invented gripper state
    assert p.labels == ["gripper", 'red "bell"'] and p.extras()["labels"] == p.labels
    assert p.answered == 2 and p.out_of_range == 0
    # Qwen2.5-VL: pixels of the image sent; unfenced JSON is the format too.
    pixel = parse_answer('[{"point_2d": [160, 120], "label": "a"}, {"point_2d": [320, 0]}]', "points_json", 320,
                         240, "pixel")
    assert pixel.status == "ok" and pixel.points == [(0.5, 0.5, None), (1.0, 0.0, None)] and pixel.labels == ["a", None]


@pytest.mark.parametrize("text, points, repair", [
    ('Here you go: [{"point_2d": [100, 200]}, {"point_2d": [300, 400]}] Done.', [(0.1, 0.2, None), (0.3, 0.4, None)],
     "text around the JSON ignored"),
    ('```json\n[{"point_2d": [100, 200], "label": "a"}, {"point_2d": [300, 400], "label": "b"}, {"point_2d": [5',
     [(0.1, 0.2, None), (0.3, 0.4, None)], "points read one by one (invalid, cut-off or wrapped JSON)"),
    ('{"points": [{"label": "a", "point_2d": [100, 200]}, {"point_2d": [300, 400]}]}',
     [(0.1, 0.2, None), (0.3, 0.4, None)], "points read one by one (invalid, cut-off or wrapped JSON)"),
    ('[{"point_2d": [100, 200]}, {"bbox_2d": [1, 2, 3, 4]}]', [(0.1, 0.2, None)], "entries without point_2d ignored"),
    ('[[100, 200], [300, 400]]', [(0.1, 0.2, None), (0.3, 0.4, None)], "bare [x, y] entries read as points"),
])
def test_qwen_answers_that_break_are_repaired_and_named(text, points, repair):
    p = parse_points_json(text, (1000.0, 1000.0))
    assert p.status == "repaired" and p.points == points and repair in p.repairs


def test_one_point_as_a_bare_object_and_the_point_key_are_the_format_too():
    assert parse_points_json('{"point_2d": [100, 200], "label": "a"}', (1000.0, 1000.0)).status == "ok"
    wrapped = parse_points_json('{"points": [{"point": [100, 200]}, {"point": [300, 400]}]}', (1000.0, 1000.0))
    assert wrapped.points == [(0.1, 0.2, None), (0.3, 0.4, None)]


def test_a_label_json_cannot_read_is_kept_as_written():
    # A raw line break inside a label is invalid JSON: the answer is still read, label and all.
    p = parse_points_json('[{"label": "the\nbell", "point_2d": [100, 200]}, {"point_2d": [300, 4', (1000.0, 1000.0))
    assert p.status == "repaired" and p.points == [(0.1, 0.2, None)] and p.labels == ["the\nbell"]


def test_points_outside_the_image_are_counted_for_the_coordinate_warning():
    # A Qwen3-VL answer (0-1000) read as pixels of a 320x240 frame: most points fall outside.
    p = parse_points_json(QWEN3, (320.0, 240.0))
    assert p.answered == 2 and p.out_of_range == 2
    assert parse_points_json("I cannot see a robot.", (1000.0, 1000.0)).reason == "no point_2d points in answer"
    h = parse_hamster("<ans>[(0.1, 0.2), (1.2, 0.5), (0.3, 3.0)]</ans>")
    assert (h.answered, h.out_of_range, len(h.points)) == (3, 2, 2)  # 1.2 clipped, 3.0 dropped


def test_smart_resize_is_qwen25_processors_resize():
    from maniflow.paths.store import smart_resize

    assert smart_resize(320, 240) == (308, 252)  # sides rounded to multiples of 28
    assert smart_resize(1920, 1080) == (1932, 1092)
    w, h = smart_resize(8000, 6000)  # above 16384 x 28 x 28 pixels: scaled down, multiples of 28 kept
    assert w * h <= 16384 * 28 * 28 and w % 28 == h % 28 == 0 and abs(w / h - 4 / 3) < 0.02
    assert smart_resize(20, 20) == (56, 56)  # below 56 x 56 pixels: scaled up
