"""A Flask site hosting a PlugIt service: see :mod:`.app`."""
