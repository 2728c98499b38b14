"""The generic training engine shared by every method: optimiser recipe, checkpointable state, the epoch loop."""
