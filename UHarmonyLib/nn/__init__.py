"""The networks: harmony layers, the domain gate network, gated heads, and the U-Harmony network built on MONAI."""
