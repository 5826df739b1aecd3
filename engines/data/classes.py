"""Class tables of the supported datasets (CamVid's lives in engines.spec)."""

from __future__ import annotations

from engines.spec import ClassInfo

# The 19 Cityscapes evaluation classes in trainId order, with the official colours.
CITYSCAPES_CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, n, c)
    for i, (n, c) in enumerate(
        [
            ("road", (128, 64, 128)),
            ("sidewalk", (244, 35, 232)),
            ("building", (70, 70, 70)),
            ("wall", (102, 102, 156)),
            ("fence", (190, 153, 153)),
            ("pole", (153, 153, 153)),
            ("traffic light", (250, 170, 30)),
            ("traffic sign", (220, 220, 0)),
            ("vegetation", (107, 142, 35)),
            ("terrain", (152, 251, 152)),
            ("sky", (70, 130, 180)),
            ("person", (220, 20, 60)),
            ("rider", (255, 0, 0)),
            ("car", (0, 0, 142)),
            ("truck", (0, 0, 70)),
            ("bus", (0, 60, 100)),
            ("train", (0, 80, 100)),
            ("motorcycle", (0, 0, 230)),
            ("bicycle", (119, 11, 32)),
        ]
    )
)


def default_color(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic display colour for class ``i`` (PASCAL VOC bit pattern)."""
    r = g = b = 0
    c = i + 1
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b
