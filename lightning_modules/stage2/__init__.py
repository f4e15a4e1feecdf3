"""Stage 2: beta_rate search, (beta_rate, beta_vq) selection and the cached validation set."""
