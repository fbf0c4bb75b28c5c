"""kakoi: a container engine and OCI runtime.

The layers, bottom to top: kernel, runtime, image, registry, build, engine, cli.
A layer imports only the layers below it.
"""

__version__ = "0.1.0"
