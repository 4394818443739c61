"""Splits by recording sequence (segedge.data.splits) on synthetic CamVid-style frame names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import write_pairs
from segedge.data.datasets import Sample, open_dataset
from segedge.data.splits import (CAMVID_DUSK, calibration_source_without, held_out_by_sequence, sequence_of,
                                 sequences, spread_across_sequences, subset, without_sequence)
from segedge.errors import DataError
from segedge.export.calibration import load_calibration_frames


def fake(names: list[str]) -> SimpleNamespace:
    """A dataset-like object: only `.samples[i].image_path` is read."""
    return SimpleNamespace(samples=[Sample(Path("train") / n, None) for n in names])


# 6 dusk frames, 4 of drive 0006R0, 10 of 0016E5, interleaved as a sorted folder would not be: order must be kept
NAMES = ([f"0016E5_{i:05d}.png" for i in range(0, 50, 10)] + [f"0001TP_{i:06d}.png" for i in range(6)]
         + [f"0006R0_f{i:05d}.png" for i in range(4)] + [f"0016E5_{i:05d}.png" for i in range(50, 100, 10)])


@pytest.mark.parametrize("name, seq", [("0001TP_006690.png", "0001TP"), ("Seq05VD_f00000.png", "Seq05VD"),
                                       ("0016E5_07959.png", "0016E5"), ("0006R0_f01230.png", "0006R0"),
                                       ("/data/camvid/train/0001TP_006690.jpg", "0001TP"),
                                       ("aachen_000000_000019_leftImg8bit.png", "aachen")])
def test_sequence_of_camvid_names(name, seq):
    assert sequence_of(name) == seq


@pytest.mark.parametrize("name", ["frame001.png", "_0001.png", "0001TP_.png"])
def test_sequence_of_rejects_names_without_a_sequence(name):
    with pytest.raises(DataError, match="SEQUENCE_FRAME"):
        sequence_of(name)


def test_held_out_by_sequence_drops_calibration_frames_whatever_their_path_or_extension():
    ds = fake(NAMES)
    dusk = [i for i, n in enumerate(NAMES) if n.startswith("0001TP")]
    assert held_out_by_sequence(ds, CAMVID_DUSK) == dusk
    calib = ["0001TP_000001.png", "/elsewhere/0001TP_000004.jpg", "0016E5_00010.png"]
    got = held_out_by_sequence(ds, CAMVID_DUSK, calib)
    assert [NAMES[i] for i in got] == ["0001TP_000000.png", "0001TP_000002.png", "0001TP_000003.png",
                                       "0001TP_000005.png"]


def test_without_sequence_is_the_exact_complement():
    ds = fake(NAMES)
    out, held = without_sequence(ds, CAMVID_DUSK), held_out_by_sequence(ds, CAMVID_DUSK)
    assert not set(out) & set(held) and sorted(out + held) == list(range(len(NAMES)))
    assert {sequence_of(NAMES[i]) for i in out} == {"0016E5", "0006R0"}


def test_an_absent_sequence_is_an_error_naming_those_present():
    with pytest.raises(DataError, match=r"'0001XX'.*present: 0016E5, 0001TP, 0006R0"):
        held_out_by_sequence(fake(NAMES), "0001XX")
    with pytest.raises(DataError, match="0001XX"):
        without_sequence(fake(NAMES), "0001XX")  # a typo must not silently hold nothing out


def test_spread_shares_frames_between_drives_and_spaces_them_in_time():
    ds = fake(NAMES)
    pool = without_sequence(ds, CAMVID_DUSK)  # 4 of 0006R0, 10 of 0016E5
    got = spread_across_sequences(ds, 6, pool)
    seqs = [sequence_of(NAMES[i]) for i in got]
    assert len(set(got)) == 6 and set(got) <= set(pool) and got == sorted(got)
    assert seqs.count("0006R0") == 3 and seqs.count("0016E5") == 3
    e5 = [NAMES[i] for i in got if NAMES[i].startswith("0016E5")]
    assert e5 == ["0016E5_00010.png", "0016E5_00050.png", "0016E5_00080.png"]  # centres of 3 slices of 10 frames
    # a small drive gives what it has and the rest goes to the others
    seqs = [sequence_of(NAMES[i]) for i in spread_across_sequences(ds, 12, pool)]
    assert seqs.count("0006R0") == 4 and seqs.count("0016E5") == 8
    assert sorted(spread_across_sequences(ds, 99, pool)) == pool
    with pytest.raises(DataError, match="positive"):
        spread_across_sequences(ds, 0)


def test_sequences_keeps_first_appearance_order():
    assert list(sequences(fake(NAMES))) == ["0016E5", "0001TP", "0006R0"]


def test_calibration_without_a_drive_never_draws_from_it(tmp_path):
    root = tmp_path / "camvid"
    stems = [f"0001TP_{i:06d}" for i in range(5)] + [f"0006R0_f{i:05d}" for i in range(3)] + \
        [f"0016E5_{i:05d}" for i in range(4)]
    write_pairs(root / "train", root / "trainannot", len(stems), 40, 48, stem_fn=lambda i: stems[i])
    src = calibration_source_without(root)
    assert len(src) == 7 and open_dataset("camvid", root, "train").samples[0].image_path.name.startswith("0001TP")
    for count in (3, 7):  # a seeded random draw, and all of it
        frames = load_calibration_frames(src, count, seed=0)
        assert len(frames) == count and not any(sequence_of(n) == CAMVID_DUSK for n in frames.names)
    picked = subset(src, spread_across_sequences(src, 4))
    assert [p.image_path.name[:6] for p in picked.samples] == ["0006R0", "0006R0", "0016E5", "0016E5"]
    img, lab = picked[0]  # still a readable dataset with its label map
    assert img.shape[:2] == lab.shape == (40, 48)
    with pytest.raises(DataError, match="empty selection"):
        subset(src, [])
