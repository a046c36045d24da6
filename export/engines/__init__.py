"""Batch scoring of tables: one shared scoring step (`export.engines.scoring`), one engine a module.

`export.engines.local` streams files on this machine; `export.engines.ray_data`
runs on a Ray cluster (Ray Data) and `export.engines.spark` on Spark. Each
engine is a thin adapter that moves pyarrow batches to `scoring.score_batch`
and back, and each reads the tables with `export.tables`.
"""
