"""Model side of the pipeline: the base model (tiny or real) and what SFT needs around it."""
