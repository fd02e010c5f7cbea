"""safeship: ship new versions of services safely."""

__version__ = "0.1.0"
