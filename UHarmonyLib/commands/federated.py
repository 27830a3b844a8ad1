"""`uharmony federated`: server, site, simulate and certs (see docs/federated.md).

`server` runs a SuperLink and submits the federation's run to it; `site` runs one
hospital's SuperNode; `simulate` runs every site in Flower's simulation on this machine;
`certs` writes a trial CA and SuperLink certificate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from UHarmonyLib.options import PROGRESS, Option, Verbs, add_command
from UHarmonyLib.progress import JsonReporter, Reporter

if TYPE_CHECKING:
    from UHarmonyLib.federated.contract import Federation

# the settings every site must share; the server (or the simulation) fixes them for the run
CONTRACT_OPTIONS = [
    Option("--sites", required=True, help="comma-separated site names, e.g. hospital-a,hospital-b,hospital-c"),
    Option("--method", default="uharmony", choices=("uharmony", "fedavg", "fedbn"), help="(uharmony)"),
    Option("--strategy", default="fedavg", choices=("fedavg", "fedprox", "fedadam", "fedavgm"), help="(fedavg)"),
    Option("--rounds", type=int, default=3, help="federated rounds (3)"),
    Option("--local-steps", type=int, default=20, help="optimizer steps per site and round (20)"),
    Option(
        "--lr",
        type=float,
        default=2e-3,
        help="peak learning rate of one one-cycle schedule over every round's local steps (2e-3)",
    ),
    Option("--proximal-mu", type=float, default=0.01, help="FedProx proximal weight (0.01)"),
    Option("--server-momentum", type=float, default=0.9, help="FedAvgM server momentum (0.9)"),
    Option("--channels", default="T1,T2,FLAIR", help="the model's channels, in order (T1,T2,FLAIR)"),
    Option("--labels", default="lesion core,edema", help="the model's labels, in order"),
    Option("--patch", type=int, default=48, help="cubic training patch (48)"),
    Option("--spacing", type=float, default=3.0, help="model grid in mm (3)"),
    Option(
        "--filters",
        nargs="+",
        default=["16", "32", "64", "128"],
        metavar="F",
        help="DynUNet widths, as for train (16 32 64 128; 16,32,64,128 also works)",
    ),
    Option("--batch", type=int, default=2, help="patches per local step (2)"),
    Option(
        "--site-params",
        default="residual",
        choices=("residual", "independent"),
        help="uharmony: site rows as a shared, averaged value plus a site offset (default), or each on its own",
    ),
    Option("--seed", type=int, default=0),
    Option(
        "--eval-every",
        type=int,
        default=0,
        metavar="N",
        help="every N rounds and after the last, each site scores the model on its validation cases (0: never)",
    ),
    Option("--min-sites", type=int, default=0, help="sites a round needs (0: all)"),
    Option("--round-timeout", type=float, default=900.0, help="seconds to wait for the sites' replies (900)"),
    Option("--name", default="uharmony-federated", help="bundle name prefix (uharmony-federated)"),
]
SERVER_OPTIONS = [
    *CONTRACT_OPTIONS,
    Option("--out", required=True, type=Path, metavar="SERVER_DIR", help="server.json, logs, backbone"),
    Option("--address", default="127.0.0.1:9091", help="HOST:PORT the SuperLink listens on"),
    Option("--tls", type=Path, metavar="CERTS", help="folder from `federated certs` (ca.crt, server.*)"),
    Option(
        "--site-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="admit only SuperNodes holding these OpenSSH EC public keys (repeatable)",
    ),
    Option("--dp-noise", type=float, default=0.0, help="Gaussian noise multiplier (0: no DP)"),
    Option("--dp-clip", type=float, default=1.0, help="clipping norm of each site's update (1.0)"),
]
SITE_OPTIONS = [
    Option("--site", required=True, help="this site's name, as the server lists it"),
    Option("--data", required=True, type=Path, metavar="LOCAL_DATASET_JSON", help="the site's cases"),
    Option("--state", required=True, type=Path, metavar="SITE_DIR", help="rows, logs and bundles"),
    Option("--superlink", default="127.0.0.1:9091", help="the server's HOST:PORT"),
    Option("--root-certificates", type=Path, metavar="CA", help="CA of the SuperLink's certificate (TLS)"),
    Option("--auth-key", type=Path, metavar="KEY", help="this site's private key (authentication)"),
    Option("--private", action="store_true", help="never publish this site's trained rows"),
]
SIMULATE_OPTIONS = [
    *CONTRACT_OPTIONS,
    Option(
        "--data",
        required=True,
        type=Path,
        action="append",
        metavar="DATASET_JSON",
        help="one dataset for all sites, or one per site in --sites order",
    ),
    Option("--out", required=True, type=Path, metavar="DIR", help="server/ and sites/<name>/"),
    PROGRESS,
]
CERTS_OPTIONS = [
    Option("--out", required=True, type=Path, metavar="CERTS"),
    Option("--host", action="append", default=[], help="SuperLink host name or IP (127.0.0.1)"),
    Option("--site", action="append", default=[], help="write an authentication key pair for this site"),
    Option("--overwrite", action="store_true", help="replace existing files (every site then needs the new ca.crt)"),
]


def add_parser(verbs: Verbs) -> None:
    """`uharmony federated server|site|simulate|certs`."""
    fed = verbs.add_parser("federated", help="train across hospitals that cannot pool images (Flower)")
    sub = fed.add_subparsers(dest="action", required=True)
    add_command(sub, "server", "run the SuperLink and the federation's run; stops when it finishes", SERVER_OPTIONS)
    add_command(sub, "site", "run one hospital's SuperNode (until stopped)", SITE_OPTIONS)
    add_command(sub, "simulate", "every site in Flower's simulation on this machine", SIMULATE_OPTIONS)
    add_command(sub, "certs", "a trial CA, SuperLink certificate and site keys", CERTS_OPTIONS)


def contract_from_args(args: argparse.Namespace) -> Federation:
    from UHarmonyLib.federated.contract import Federation

    return Federation(
        sites=args.sites,
        channels=args.channels,
        labels=args.labels,
        method=args.method,
        strategy=args.strategy,
        rounds=args.rounds,
        local_steps=args.local_steps,
        lr=args.lr,
        proximal_mu=args.proximal_mu,
        server_momentum=args.server_momentum,
        batch=args.batch,
        patch=args.patch,
        spacing=args.spacing,
        filters=",".join(w for word in args.filters for w in word.split(",") if w.strip()),
        site_params=args.site_params,
        seed=args.seed,
        eval_every=args.eval_every,
        min_sites=args.min_sites,
        round_timeout=args.round_timeout,
        name=args.name,
    )


def run_federated(args: argparse.Namespace, reporter: Reporter) -> None:
    if args.action == "server":
        run_server(args, reporter)
    elif args.action == "site":
        run_site(args)
    elif args.action == "simulate":
        run_simulate(args, reporter)
    else:
        run_certs(args)


def run_server(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.federated.deploy import Tls, serve_deployment

    contract = contract_from_args(args)
    tls = Tls.from_folder(args.tls) if args.tls else None
    record = serve_deployment(contract, args.out, args.address, tls, args.site_key, (args.dp_noise, args.dp_clip))
    print(_summary(record))
    return record


def run_site(args: argparse.Namespace) -> None:
    """The SuperNode in the foreground until stopped; Ctrl-C or SIGTERM stops it and the processes it started."""
    from UHarmonyLib.errors import InputError
    from UHarmonyLib.federated.deploy import flower_env, run_site_node, site_command
    from UHarmonyLib.federated.names import check_name

    check_name("--site", args.site)
    if not args.data.exists():
        raise InputError(f"{args.data}: dataset not found")
    for path in (args.root_certificates, args.auth_key):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: file not found")
    command = site_command(
        args.superlink, args.site, args.data, args.state, args.root_certificates, args.auth_key, not args.private
    )
    args.state.mkdir(parents=True, exist_ok=True)
    state = args.state.resolve()
    run_site_node(command, flower_env(state / "flwr-home"), state / "supernode.log", args.superlink)


def _summary(record: dict[str, Any]) -> str:
    """The rounds, the validation Dice and each site's bundle path (what a user opens next)."""
    rounds = record.get("rounds", [])
    per_round = sum(r["seconds"] for r in rounds) / max(1, len(rounds))
    dice = ", ".join(f"{k} {v:.3f}" for k, v in record.get("dice_whole_lesion", {}).items())
    bundles = [f"bundle of {site}: {path}" for site, path in sorted(record.get("bundles", {}).items())]
    return "\n".join([f"{len(rounds)} round(s), {per_round:.1f} s per round; validation Dice: {dice}", *bundles])


def run_simulate(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.federated.simulate import simulate

    record = simulate(contract_from_args(args), args.data, args.out)
    if isinstance(reporter, JsonReporter):
        reporter.result(record)
    else:
        print(_summary(record))
    return record


def run_certs(args: argparse.Namespace) -> None:
    from UHarmonyLib.federated.certs import make_certs

    print("\n".join(map(str, make_certs(args.out, args.host or ["127.0.0.1"], args.site, args.overwrite))))
