"""Built-in checks: importing this package registers them (see :mod:`diffdiag.registry`).

Each module wires one topic's pure analyzers (``diffdiag.analyzers.*``) to the
run model. Add a module here and import it below to add a topic.
"""

from importlib import import_module

_MODULES = [
    "loss",
    "latents",
    "dataset",
    "images",
    "checkpoints",
    "samples",
    "attention",
]

for _name in _MODULES:
    import_module(f"{__name__}.{_name}")
