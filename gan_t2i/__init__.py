"""gan_t2i: text-conditioned StyleGAN2-style GANs with sentence-transformer caption embeddings."""

__version__ = "0.1.0"
