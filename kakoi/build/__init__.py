"""Building images from Dockerfiles: the parser, the layer cache and the executor."""
