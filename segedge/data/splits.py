"""Splits by recording sequence: frames held out by drive, calibration sources without a drive, spread selections.

A CamVid frame's name starts with its drive (`0001TP_006690.png`, `Seq05VD_f00000.png`, `0016E5_07959.png`,
`0006R0_f01230.png`): consecutive frames of one drive look alike, so a frame split at random leaks the drive into
both halves. Holding a whole drive out (calibrate without it, evaluate on it) measures what a change of conditions
costs; CamVid's dusk drive 0001TP is the one the INT8 benchmarks hold out.

Works on any dataset with `.samples[i].image_path` (segedge.data.datasets.SegDataset); names are compared by stem,
so a calibration frame is excluded whatever its extension or folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import DataError

# CamVid's dusk drive: the only train sequence recorded at dusk, never in val, so held out by sequence it is a change
# of conditions the calibration did not see.
CAMVID_DUSK = "0001TP"


def sequence_of(name: str | Path) -> str:
    """The recording sequence of a frame name: the part of its stem before the first '_' (`0001TP_006690.png` →
    `0001TP`)."""
    stem = Path(name).stem
    seq, sep, frame = stem.partition("_")
    if not sep or not seq or not frame:
        raise DataError(f"cannot tell the sequence of frame '{Path(name).name}': splitting by sequence needs "
                        "CamVid-style names SEQUENCE_FRAME (e.g. 0001TP_006690.png); rename the frames or split "
                        "another way")
    return seq


def _stems(names: Iterable[str | Path]) -> set[str]:
    return {Path(n).stem for n in names}


def sequences(dataset: Any) -> dict[str, list[int]]:
    """{sequence: sample indices in dataset order}, sequences in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        out.setdefault(sequence_of(s.image_path), []).append(i)
    return out


def _indices_of(dataset: Any, sequence: str) -> list[int]:
    """Sample indices of `sequence`; DataError naming the sequences present when it has none."""
    seqs = sequences(dataset)
    if sequence not in seqs:
        raise DataError(f"no frames of sequence '{sequence}' in {dataset!r}; sequences present: "
                        f"{', '.join(seqs) or 'none'}")
    return seqs[sequence]


def held_out_by_sequence(dataset: Any, sequence: str, exclude_names: Iterable[str | Path] = ()) -> list[int]:
    """Sample indices of `sequence` minus frames named in `exclude_names` (e.g. calibration frames), in order."""
    skip = _stems(exclude_names)
    return [i for i in _indices_of(dataset, sequence) if Path(dataset.samples[i].image_path).stem not in skip]


def without_sequence(dataset: Any, sequence: str) -> list[int]:
    """Sample indices of every sequence but `sequence`, in order (`sequence` must be present: a typo would
    otherwise silently hold nothing out)."""
    drop = set(_indices_of(dataset, sequence))
    return [i for i in range(len(dataset.samples)) if i not in drop]


def spread_across_sequences(dataset: Any, count: int, indices: Sequence[int] | None = None) -> list[int]:
    """`count` sample indices (of `indices`, default all) shared as evenly as possible between the sequences and
    evenly spaced in time within each: a calibration set that sees every drive and all of each drive."""
    if count <= 0:
        raise DataError(f"a spread selection needs a positive frame count, got {count}")
    pool = list(range(len(dataset.samples))) if indices is None else list(indices)
    groups: dict[str, list[int]] = {}
    for i in pool:
        groups.setdefault(sequence_of(dataset.samples[i].image_path), []).append(i)
    share = _shares({k: len(v) for k, v in groups.items()}, min(count, len(pool)))
    picked = []
    for seq, idx in groups.items():
        k = share[seq]
        # centres of k equal slices of the drive: first and last frames are not favoured
        picked += [idx[int((j + 0.5) * len(idx) / k)] for j in range(k)]
    return sorted(picked)


def _shares(sizes: dict[str, int], count: int) -> dict[str, int]:
    """Split `count` between groups as equally as their sizes allow (water-filling), larger groups first on ties."""
    share = dict.fromkeys(sizes, 0)
    left = count
    while left > 0:
        open_ = [k for k in sizes if share[k] < sizes[k]]
        each = max(1, left // len(open_))
        for k in sorted(open_, key=lambda k: -sizes[k]):
            add = min(each, sizes[k] - share[k], left)
            share[k] += add
            left -= add
            if left == 0:
                break
    return share


def subset(dataset: Any, indices: Sequence[int]) -> Any:
    """A shallow copy of `dataset` holding only the samples at `indices` (same reader, classes and label map), usable
    wherever a dataset is: `--calib`, `ExportOptions(calib=…, val=…)`, evaluation."""
    if not indices:
        raise DataError(f"an empty selection of {dataset!r}: nothing to calibrate or evaluate on")
    out = copy.copy(dataset)
    out.samples = [dataset.samples[i] for i in indices]
    out.skipped = 0
    return out


def calibration_source_without(root: str | Path, sequence: str = CAMVID_DUSK, dataset: str = "camvid",
                               split: str = "train") -> Any:
    """The `split` of a dataset minus one sequence, as a calibration source (`ExportOptions(calib=…)`)."""
    from .datasets import open_dataset

    ds = open_dataset(dataset, root, split)
    return subset(ds, without_sequence(ds, sequence))
