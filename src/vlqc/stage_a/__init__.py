"""Stage-A: per-image summaries for every photo of every ticket of a mission."""
