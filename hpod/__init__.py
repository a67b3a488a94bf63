"""hpod: hyperparameter optimisation as a service, with Optuna underneath."""

__version__ = "0.1.0"
