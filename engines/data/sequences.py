"""Select samples by the recording they come from: validation on held-out sequences.

CamVid's val split is one drive (0016E5) that also makes up 204 of the 367 training
frames, so a val figure measures a model on streets it has seen from a few metres away; a
new user's camera sees other streets. Holding a whole sequence out of training and scoring
on it is the closer proxy, and the way to choose a recipe that generalises:

    segstream train ... --train-split 'train+val:except=0001TP' --val-split 'train:only=0001TP'

A sample's *sequence* is its file name up to the first underscore: the drive in CamVid
(``0016E5_07959``), the city in Cityscapes (``aachen_000000_000019``), and whatever
prefix a folder dataset's names share. A split spec is ``SPLIT[+SPLIT...]`` optionally
followed by ``:only=SEQ[,SEQ...]`` or ``:except=SEQ[,SEQ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engines.data.readers import DatasetError


def sequence_of(name: str) -> str:
    """The sequence of a sample stem: the part before the first ``_`` (the whole stem
    when it has none)."""
    return name.split("_", 1)[0]


@dataclass(frozen=True)
class SequenceFilter:
    """Keep the samples of ``sequences`` (``keep=True``, ``:only=``) or all but those
    (``keep=False``, ``:except=``)."""

    sequences: frozenset[str]
    keep: bool

    def describe(self) -> str:
        return f"{'only' if self.keep else 'except'} {','.join(sorted(self.sequences))}"


def parse_split(spec: str) -> tuple[str, SequenceFilter | None]:
    """``"train+val:except=0001TP"`` -> ``("train+val", SequenceFilter({"0001TP"}, False))``.

    Raises:
        DatasetError: an unknown filter word or an empty sequence list.
    """
    base, sep, rest = spec.partition(":")
    if not sep:
        return spec, None
    word, eq, names = rest.partition("=")
    if word not in ("only", "except") or not eq:
        raise DatasetError(f"split {spec!r}: after ':' write only=SEQ[,SEQ] or "
                           f"except=SEQ[,SEQ], e.g. 'train:only=0001TP'")
    sequences = frozenset(s.strip() for s in names.split(",") if s.strip())
    if not sequences:
        raise DatasetError(f"split {spec!r}: no sequence named after {word}=")
    if not base:
        raise DatasetError(f"split {spec!r}: name the split before ':', e.g. 'train:{rest}'")
    return base, SequenceFilter(sequences, keep=word == "only")


def kept_indices(names: list[str], flt: SequenceFilter, source: str) -> list[int]:
    """Indices of the sample stems ``names`` that ``flt`` keeps, in their order (the
    samples need not be read: a stem is a file name's).

    Raises:
        DatasetError: a named sequence is not among them (the message, which starts with
            ``source``, lists those that are), or nothing is left.
    """
    present = sorted({sequence_of(n) for n in names})
    unknown = sorted(flt.sequences - set(present))
    if unknown:
        raise DatasetError(f"{source}: no sequence {', '.join(unknown)}; its sequences: "
                           f"{', '.join(present)}")
    keep = [i for i, n in enumerate(names) if (sequence_of(n) in flt.sequences) == flt.keep]
    if not keep:
        raise DatasetError(f"{source} {flt.describe()}: no samples left; its sequences: "
                           f"{', '.join(present)}")
    return keep
