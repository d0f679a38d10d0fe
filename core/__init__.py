"""The core: configuration, errors, the vocabulary model and the one reader stack for
records (items, interactions, tag files). It imports nothing else of the project, so every
other folder may import it."""
