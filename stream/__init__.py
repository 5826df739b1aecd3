"""segstream.stream: capture, pipeline, publish/subscribe and the command line."""

__version__ = "0.1.0"
