"""Analysis tools for trained SeqBoat checkpoints.

* :mod:`seqboat_fairseq.analysis.activation`: per-layer activation time of the GAU and router
  confidence maps (the paper's RQ2, figures 3 and 4)::

      python -m seqboat_fairseq.analysis.activation --path CHECKPOINT --data DATA_DIR --out-dir OUT

  The stages live in ``load``, ``measure``, ``summary``, ``output`` and ``plots``; ``cli`` is the
  command line, ``activation`` its entry point.

The submodules are imported lazily (they pull in matplotlib only when plotting), so importing
``seqboat_fairseq`` does not import them.
"""
