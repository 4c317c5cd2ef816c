"""Stage-2 AB training: teacher-forced channel A mixed with rollout-matching channel B on the model's own rollouts."""
