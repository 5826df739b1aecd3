"""segstream.engines: backends, pre/post-processing, models and training."""
