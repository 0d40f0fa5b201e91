"""The one list of algorithms: a name and where its class lives. ``c4_lightning.algos``, ``load_policy``, the CLI's
``--model NAME`` and the shared contract test (``tests/test_algorithm_contract.py``) all read it, so a new algorithm
is its own file plus one line here (see CONTRIBUTING.md for the contract it implements)."""

from __future__ import annotations

import importlib

ALGORITHMS: dict[str, str] = {
    "TD3BC": "c4_lightning.algos.td3bc:TD3BC",
    "CQL": "c4_lightning.algos.cql:CQL",
    "IQL": "c4_lightning.algos.iql:IQL",
}


def algorithm_class(name: str) -> type:
    """The class registered as ``name`` (``ValueError`` naming the registered ones otherwise)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; registered: {', '.join(ALGORITHMS)}")
    module, attr = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def algorithm_classes() -> dict[str, type]:
    """``{name: class}`` for every registered algorithm."""
    return {name: algorithm_class(name) for name in ALGORITHMS}
