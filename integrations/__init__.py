"""Tracker and training integrations (W&B, MLflow, TensorBoard, training hooks).

Installed as ``diffdiag.integrations``. Each module imports its tracker package
lazily, inside functions, so that importing diffdiag never needs a tracker.
"""
