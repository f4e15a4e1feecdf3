"""Training systems (stages 0, 1_x, 3), their losses, beta sampling and stage hand-over."""
