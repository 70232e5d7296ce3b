"""Bad input: the catalogue of invalid manifests (manifests/catalogue.yaml) and its loader (catalogue.py)."""
