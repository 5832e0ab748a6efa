"""genres: a distributed batch pipeline that tags music catalogs with genres."""

__version__ = "0.1.0"
