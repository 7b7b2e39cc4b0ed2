"""Hyperparameter and architecture search with Optuna: space files, workers, trials scored on validation only."""
