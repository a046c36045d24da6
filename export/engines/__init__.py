"""Batch scoring of tables: one shared scoring step (`export.engines.scoring`), one engine a module.

`export.engines.local` streams files on this machine. Each engine is a thin
adapter that moves pyarrow batches to `scoring.score_batch` and back.
"""
