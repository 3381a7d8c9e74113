"""Search algorithms: each one a small module (darts.py, ...) over the shared trainer."""
