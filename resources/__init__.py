"""Icons and the .desktop file, read with importlib.resources."""
