import numpy as np


# EVOLVE-BLOCK-START
def search_algorithm(iterations=50, bounds=(-5.0, 5.0)):
    """Random search: sample points uniformly in the box, keep the best. Returns (x, y)."""
    rng = np.random.default_rng()
    best_x, best_y = rng.uniform(bounds[0], bounds[1], size=2)
    best_value = evaluate_function(best_x, best_y)
    for _ in range(iterations):
        x, y = rng.uniform(bounds[0], bounds[1], size=2)
        value = evaluate_function(x, y)
        if value < best_value:
            best_x, best_y, best_value = x, y, value
    return best_x, best_y
# EVOLVE-BLOCK-END


def evaluate_function(x, y):
    """The function to minimise (the evaluator computes it itself)."""
    return np.sin(x) * np.cos(y) + np.sin(x * y) + (x ** 2 + y ** 2) / 20
