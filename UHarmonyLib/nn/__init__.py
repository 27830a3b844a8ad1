"""Network parts: harmony layer, domain gate, gated heads, and the network constructor."""

from UHarmonyLib.nn.gate import DomainGate
from UHarmonyLib.nn.harmony import HarmonyNorm
from UHarmonyLib.nn.heads import GatedHead
from UHarmonyLib.nn.network import NetworkConfig, UHarmonyNet
from UHarmonyLib.nn.site_weights import SiteConditioned, one_hot_weights

__all__ = [
    "DomainGate",
    "GatedHead",
    "HarmonyNorm",
    "NetworkConfig",
    "SiteConditioned",
    "UHarmonyNet",
    "one_hot_weights",
]
