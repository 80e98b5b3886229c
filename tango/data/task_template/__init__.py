"""Files copied into every generated synthetic task folder (``task.yaml.tmpl`` is filled in, ``utils.py`` copied)."""
