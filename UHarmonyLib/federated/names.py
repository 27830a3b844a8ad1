"""Names that become file and folder names: site names, bundle prefixes, certificate hosts.

A site's name is part of its key files, its state folder and its bundle's folder, so it
follows the plain-name rule (UHarmonyLib.data.names.PLAIN_NAME): no slashes, spaces or
leading dot can take a write outside the folder it was meant for. Standard library only:
`federated certs` runs without torch.
"""

from __future__ import annotations

import ipaddress
import re

from UHarmonyLib.data.names import PLAIN_NAME, PLAIN_NAME_RULE
from UHarmonyLib.errors import InputError

DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_name(flag: str, name: str) -> str:
    """`name` if it is a plain site or bundle name; else the one-line refusal naming `flag`."""
    if not PLAIN_NAME.fullmatch(name):
        raise InputError(f"{flag} {name!r}: {PLAIN_NAME_RULE}")
    return name


def check_host(host: str) -> str:
    """`host` if it is an IP address or a DNS host name (what a certificate can name)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise InputError(f"--host {host!r}: not an IP address or a DNS host name")
    return host
