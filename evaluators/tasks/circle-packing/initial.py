import numpy as np


# EVOLVE-BLOCK-START
def construct_packing():
    """Place 26 circles in the unit square: a 6 x 5 grid of equal circles, first 26 cells.
    Returns (centers, radii): arrays of shape (26, 2) and (26,)."""
    n, cols, rows = 26, 6, 5
    r = min(1 / (2 * cols), 1 / (2 * rows))
    centers = [((c + 0.5) / cols, (k + 0.5) / rows) for k in range(rows) for c in range(cols)][:n]
    return np.array(centers), np.full(n, r)
# EVOLVE-BLOCK-END
