"""Beyond one recipe: the evaluator, greedy soups, the CMA-ES merge search, their history and
the runner for soup and search requests."""
