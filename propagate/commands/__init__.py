"""Subcommands of the ``propagate`` CLI, in the order ``--help`` lists them.

Each module imports only the standard library at module level (fast ``--help``).
"""

COMMAND_MODULES = [
    "solve_selu",
    "self_normalize",
    "transform",
    "derive",
    "theory",
    "critical",
    "gain",
    "simulate",
    "inspect",
    "spectrum",
    "data",
    "train",
    "reproduce",
    "trainability",
    "scaling",
    "report",
    "sweep",
]
