"""Experiments built from many runs (the practical's study). Sits between evaluation and reports."""
