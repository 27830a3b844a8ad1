"""Federated U-Harmony on Flower: the backbone is learned together, each site's columns stay home.

`contract` is what every node agrees on (from the run config), `split` decides which
tensors may leave a site, `site` is one hospital's training and bundle writing,
`client_app` / `server_app` are the Flower apps, `deploy` starts the real processes.
See docs/federated.md for exactly what leaves a site.
"""
