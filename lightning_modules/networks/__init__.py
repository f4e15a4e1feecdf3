"""Plain ``nn.Module`` networks of DC-VIC (torch, compressai and taming only; never Lightning or Hydra)."""
