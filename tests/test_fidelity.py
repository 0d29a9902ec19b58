"""fidelity.hand_region_mask against a pixel-by-pixel distance to the bones."""
import numpy as np
import torch

from handgan.fidelity import hand_region_mask, skeleton_edges


def _brute_force(px: np.ndarray, size: int, edges, radius: float) -> np.ndarray:
    mask = np.zeros((size, size))
    for r in range(size):
        for c in range(size):
            p = np.array([c + 0.5, r + 0.5])
            d = []
            for i, k in edges or [(j, j) for j in range(len(px))]:
                a, ab = px[i], px[k] - px[i]
                t = np.clip((p - a) @ ab / max(ab @ ab, 1e-9), 0.0, 1.0)
                d.append(np.linalg.norm(p - (a + t * ab)))
            mask[r, c] = min(d) <= radius
    return mask


def test_mask_is_the_pixels_within_radius_of_a_bone():
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 32, size=(2, 14, 2))
    for edges in (skeleton_edges(14), ()):
        got = hand_region_mask(torch.as_tensor(px), 32, edges, 2.9).numpy()
        assert got.shape == (2, 1, 32, 32)
        for b in range(2):
            np.testing.assert_array_equal(got[b, 0], _brute_force(px[b], 32, edges, 2.9))


def test_one_horizontal_bone_is_a_stadium():
    # bone from pixel centre (10.5, 16.5) to (20.5, 16.5), radius 2: 11 columns x 5 rows, plus
    # per cap 3 pixels one column out (rows 15-17) and 1 pixel two columns out (row 16)
    px = torch.tensor([[[10.5, 16.5], [20.5, 16.5]]])
    mask = hand_region_mask(px, 32, [(0, 1)], 2.0)[0, 0]
    assert int(mask.sum()) == 11 * 5 + 2 * (3 + 1)
    assert mask[16, 8] == 1 and mask[16, 7] == 0 and mask[14, 10] == 1 and mask[13, 10] == 0
