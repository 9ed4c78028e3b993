"""Training: the run loop, its steps, optimiser, schedule, checkpoints and run folder."""
