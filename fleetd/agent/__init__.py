"""The node agent: supervises replica processes, probes them, installs backends, reports node facts."""
