"""Joint sets of the depth hand datasets: names, evaluation subsets and skeletons.

Each dataset's joint set is one ``JointLayout``: the readable names every command prints
(``little_tip`` ... ``palm_centre``), the dataset's own names (kept where its files carry them),
the bones as a tree rooted at the palm or wrist, and the joint crops are centred on. The joint
count alone tells the layouts apart (NYU 14 or 36, ICVL 16, MSRA 21), which is all a network or
a prediction file knows of its joints.

NYU stores 36 points per frame (two per bone, Tompson's fitting-model spheres); the field
evaluates 14 of them. Finger blocks are ordered little (F1), ring (F2), middle (F3), index (F4),
thumb (TH), then six palm/wrist points. Within a finger block: KNU3 = distal bone, KNU2 = middle
bone (thumb: proximal phalanx), KNU1 = proximal bone (thumb: metacarpal); A = the end nearer the
tip. ``PALM_1``/``PALM_2`` are the ulnar/radial wrist points, ``PALM_3`` the palm centre,
``PALM_6`` the fitting model's origin (research/synthetic-hand.md 3.2).

ICVL labels 16 joints: the palm centre, then thumb, index, middle, ring and little finger, three
joints each from the root to the tip. MSRA 2015 labels 21: the wrist, then index, middle, ring,
little finger and thumb, four joints each (MCP, PIP, DIP, tip) (research/deep-prior-pp.md 1.2-1.3).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# --- NYU -----------------------------------------------------------------------------------------

_FINGER_BLOCKS = ("F1", "F2", "F3", "F4", "TH")
_BONE_POINTS = ("KNU3_A", "KNU3_B", "KNU2_A", "KNU2_B", "KNU1_A", "KNU1_B")

NYU_JOINT_NAMES: tuple[str, ...] = tuple(
    f"{finger}_{point}" for finger in _FINGER_BLOCKS for point in _BONE_POINTS
) + tuple(f"PALM_{i}" for i in range(1, 7))
assert len(NYU_JOINT_NAMES) == 36

# Readable names of the 36 points. Two spheres sit at each finger joint (the ends of the two
# bones that meet there); the one the 14-joint set evaluates keeps the plain name (KNU2_B is the
# PIP of NYU14), the other gets "_2". The spheres PALM_4/PALM_5 have no documented anatomy.
_NYU36_FINGER_POINTS = ("tip", "dip", "dip_2", "pip", "pip_2", "mcp")
_NYU36_THUMB_POINTS = ("tip", "ip", "ip_2", "mcp", "mcp_2", "cmc")
NYU36_NAMES: tuple[str, ...] = tuple(
    f"{finger}_{point}" for finger in ("little", "ring", "middle", "index")
    for point in _NYU36_FINGER_POINTS
) + tuple(f"thumb_{point}" for point in _NYU36_THUMB_POINTS) + (
    "wrist_ulnar", "wrist_radial", "palm_centre", "palm_4", "palm_5", "hand_origin")

# The 14 evaluation joints (Tompson protocol, DeepPrior++ `restrictedJointsEval`).
NYU_EVAL_IDS: tuple[int, ...] = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
NYU14_NAMES: tuple[str, ...] = (
    "little_tip", "little_pip", "ring_tip", "ring_pip", "middle_tip", "middle_pip",
    "index_tip", "index_pip", "thumb_tip", "thumb_ip", "thumb_mcp",
    "wrist_ulnar", "wrist_radial", "palm_centre",
)
assert NYU14_NAMES == tuple(NYU36_NAMES[i] for i in NYU_EVAL_IDS)
NYU14_PALM = 13  # index of the palm centre (NYU id 32) in the 14-joint set: the crop reference

# Bones of the 14-joint skeleton, for drawing (parent, child) in 14-joint indices.
NYU14_EDGES: tuple[tuple[int, int], ...] = (
    (13, 1), (1, 0), (13, 3), (3, 2), (13, 5), (5, 4), (13, 7), (7, 6),
    (13, 10), (10, 9), (9, 8), (13, 11), (13, 12),
)

# Bones of the full 36-point layout: each finger is a chain tip <- ... <- base, bases hang off the
# palm centre (32); the wrist points hang off the wrist/model origin (35).
NYU36_EDGES: tuple[tuple[int, int], ...] = tuple(
    (6 * f + k + 1, 6 * f + k) for f in range(5) for k in range(5)
) + tuple((32, 6 * f + 5) for f in range(5)) + ((35, 30), (35, 31), (35, 32), (32, 33), (32, 34))

# --- ICVL ----------------------------------------------------------------------------------------

_ICVL_FINGERS = (("T", "thumb"), ("I", "index"), ("M", "middle"), ("R", "ring"), ("P", "little"))
ICVL_JOINT_NAMES: tuple[str, ...] = ("C",) + tuple(
    f"{letter}{k}" for letter, _ in _ICVL_FINGERS for k in (1, 2, 3)
)  # the label files' order (DeepPrior++'s names): palm centre, then root to tip per finger
ICVL16_NAMES: tuple[str, ...] = ("palm_centre",) + tuple(
    f"{finger}_{point}" for _, finger in _ICVL_FINGERS for point in ("root", "mid", "tip"))
ICVL16_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge for f in range(5) for edge in ((0, 1 + 3 * f), (1 + 3 * f, 2 + 3 * f),
                                        (2 + 3 * f, 3 + 3 * f)))

# --- MSRA ----------------------------------------------------------------------------------------

# MSRA's files carry no names; these are readable already and serve as both.
MSRA_JOINT_NAMES: tuple[str, ...] = ("wrist",) + tuple(
    f"{finger}_{point}"
    for finger in ("index", "middle", "ring", "little", "thumb")
    for point in ("mcp", "pip", "dip", "tip")
)  # dataset order: wrist, then 4 points per finger from the knuckle out; the thumb comes last
MSRA21_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge for f in range(5) for edge in ((0, 1 + 4 * f), (1 + 4 * f, 2 + 4 * f),
                                        (2 + 4 * f, 3 + 4 * f), (3 + 4 * f, 4 + 4 * f)))

# --- Layouts -------------------------------------------------------------------------------------

DIGITS = ("little", "ring", "middle", "index", "thumb", "palm")  # drawing colours, in this order


@dataclass(frozen=True)
class JointLayout:
    """One dataset's joint set."""

    name: str                           # short id: "nyu14", "nyu36", "icvl16", "msra21"
    names: tuple[str, ...]              # readable names, in the network's / files' joint order
    dataset_names: tuple[str, ...]      # the dataset's own names, as its readers spell them
    edges: tuple[tuple[int, int], ...]  # the bones (parent, child): a tree from root to all
    root: int                           # palm centre (NYU 36: the hand's origin; MSRA: wrist)
    centre: int                         # the joint crops are centred on (DeepPrior++'s)

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def digits(self) -> tuple[int, ...]:
        """Per joint, the index in ``DIGITS`` of the finger it belongs to (palm: the last)."""
        return tuple(next((k for k, d in enumerate(DIGITS[:5]) if n.startswith(d + "_")), 5)
                     for n in self.names)


NYU14 = JointLayout("nyu14", NYU14_NAMES, tuple(NYU_JOINT_NAMES[i] for i in NYU_EVAL_IDS),
                    NYU14_EDGES, root=NYU14_PALM, centre=NYU14_PALM)
NYU36 = JointLayout("nyu36", NYU36_NAMES, NYU_JOINT_NAMES, NYU36_EDGES, root=35, centre=32)
ICVL16 = JointLayout("icvl16", ICVL16_NAMES, ICVL_JOINT_NAMES, ICVL16_EDGES, root=0, centre=0)
MSRA21 = JointLayout("msra21", MSRA_JOINT_NAMES, MSRA_JOINT_NAMES, MSRA21_EDGES, root=0,
                     centre=MSRA_JOINT_NAMES.index("middle_mcp"))  # DeepPrior++ crops there
LAYOUTS: dict[int, JointLayout] = {lay.num_joints: lay for lay in (NYU14, ICVL16, MSRA21, NYU36)}


def layout_for(num_joints: int) -> JointLayout | None:
    """The layout with ``num_joints`` joints, or None for a joint set of no known dataset."""
    return LAYOUTS.get(int(num_joints))


def layout_of_names(names: Sequence[str]) -> JointLayout | None:
    """The layout whose readable or dataset names are ``names``, or None."""
    layout = layout_for(len(names))
    names = tuple(names)
    return layout if layout is not None and names in (layout.names, layout.dataset_names) else None


def readable_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` in the one readable spelling (``F1_KNU3_A`` ... -> ``little_tip`` ...; ICVL's
    ``C``, ``T1`` ... -> ``palm_centre``, ``thumb_root`` ...); names of no known layout as given."""
    layout = layout_of_names(names)
    return layout.names if layout is not None else tuple(names)


def skeleton_edges(num_joints: int) -> tuple[tuple[int, int], ...]:
    """The bones of the ``num_joints`` layout; () for a joint set of no known dataset."""
    layout = layout_for(num_joints)
    return layout.edges if layout is not None else ()
