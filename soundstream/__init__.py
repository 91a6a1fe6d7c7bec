"""soundstream: sensor audio in over AMQP, spectral features out over HTTP."""

__version__ = "0.1.0"
