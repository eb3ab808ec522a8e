"""Model families. Each family module (`cogvideox`, `svd`) loads a diffusers folder, encodes its
conditioning, runs its VAE and builds its denoiser, and exposes one ``FAMILY`` object implementing
`vidinv.family.Family`; its attention processors live beside it (`cogvideox_attention`,
`svd_attention`). `loading` is the plumbing they share; `rope` is CogVideoX's rotary table."""
