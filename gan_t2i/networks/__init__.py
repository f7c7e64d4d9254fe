"""Pure network modules: layers, generator, discriminator (no file or network I/O)."""

from gan_t2i.networks.discriminator import Discriminator
from gan_t2i.networks.generator import Generator

__all__ = ["Discriminator", "Generator"]
