"""Training machinery shared by search and evaluation: optimisers, schedules, the resumable loop."""
