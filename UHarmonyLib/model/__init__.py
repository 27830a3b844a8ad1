"""Model bundles: the torch-free model card (`card`), the network weights (`weights`), the signature bank."""
