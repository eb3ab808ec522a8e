"""Model families. Each module loads a diffusers folder and exposes the same small surface:
text encoding, VAE encode/decode, and a denoiser callable for the samplers in vidinv.ddim."""
