"""Joint sets of the depth hand datasets: names, evaluation subsets and skeleton edges.

NYU stores 36 points per frame (two per bone, Tompson's fitting-model spheres); the field evaluates
14 of them. Finger blocks are ordered little (F1), ring (F2), middle (F3), index (F4), thumb (TH),
then six palm/wrist points. Within a finger block: KNU3 = distal bone, KNU2 = middle bone (thumb:
proximal phalanx), KNU1 = proximal bone (thumb: metacarpal); A = the end nearer the tip.
"""
from __future__ import annotations

_FINGER_BLOCKS = ("F1", "F2", "F3", "F4", "TH")
_BONE_POINTS = ("KNU3_A", "KNU3_B", "KNU2_A", "KNU2_B", "KNU1_A", "KNU1_B")

NYU_JOINT_NAMES: tuple[str, ...] = tuple(
    f"{finger}_{point}" for finger in _FINGER_BLOCKS for point in _BONE_POINTS
) + tuple(f"PALM_{i}" for i in range(1, 7))
assert len(NYU_JOINT_NAMES) == 36

# The 14 evaluation joints (Tompson protocol, DeepPrior++ `restrictedJointsEval`).
NYU_EVAL_IDS: tuple[int, ...] = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)
NYU14_NAMES: tuple[str, ...] = (
    "little_tip", "little_pip", "ring_tip", "ring_pip", "middle_tip", "middle_pip",
    "index_tip", "index_pip", "thumb_tip", "thumb_ip", "thumb_mcp",
    "wrist_ulnar", "wrist_radial", "palm_centre",
)
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
