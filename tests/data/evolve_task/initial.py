import numpy as np  # noqa: F401  (the terms the search writes use np.sin, np.exp...)


# EVOLVE-BLOCK-START
def equation(x, params):
    """y from x (a numpy array) as a weighted sum of terms; params: 10 fitted weights."""
    return params[0] * x + params[1]
# EVOLVE-BLOCK-END
