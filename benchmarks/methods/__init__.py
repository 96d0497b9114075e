"""The parts of ``benchmarks/methods_mnist1d.py`` (its entry point and protocol).

- :mod:`methods.rows`: the shared training recipe, the :class:`~methods.rows.Method` rows and
  the groups;
- :mod:`methods.batches`: the training batches of each setting;
- :mod:`methods.jobs`: one run (build and fit, stages, born-again generations);
- :mod:`methods.log`: the recipe key, the table's path and the jsonl log;
- :mod:`methods.table`: rendering the tables.
"""
