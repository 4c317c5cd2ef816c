"""Stage-2 AB: teacher-forced channel A mixed with channel B learned from the model's own rollouts (docs/stage2.md)."""
