"""Runs under a work directory: their identity, the index of what was trained, and champion promotion.

- `naming`: a training run's id and directory from data + config + code, and whether it is complete;
- `index`: the table behind `segpipe runs` (every run's config, lineage and metrics);
- `promotion`: the retrain gate, the champion record and its history.
"""
