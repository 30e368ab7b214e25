"""camtool's version, in a module of its own so that nothing inside camtool imports the package face."""

__version__ = "0.1.0"
