"""airspeed velocity benchmarks of etaretrieval (scikit-learn's layout: one module per kernel family)."""
