"""LR schedulers registered with fairseq's ``--lr-scheduler``: ``linear_decay``."""

from . import linear_decay  # noqa: F401
