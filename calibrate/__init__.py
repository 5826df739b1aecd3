"""segstream.calibrate: INT8 quantization with a measured accuracy report."""
