"""`uharmony federated`: server, site, simulate and certs (see docs/federated.md).

`server` runs a SuperLink and submits the federation's run to it; `site` runs one
hospital's SuperNode; `simulate` runs every site in Flower's simulation on this machine;
`certs` writes a trial CA and SuperLink certificate.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from UHarmonyLib.progress import JsonReporter, Reporter

if TYPE_CHECKING:
    from UHarmonyLib.federated.contract import Federation


def add_contract_options(p: argparse.ArgumentParser) -> None:
    """The settings every site must share; the server (or the simulation) fixes them for the run."""
    p.add_argument("--sites", required=True, help="comma-separated site names, e.g. hospital-a,hospital-b,hospital-c")
    p.add_argument("--method", default="uharmony", choices=["uharmony", "fedavg", "fedbn"], help="(uharmony)")
    p.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedadam"], help="(fedavg)")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds (3)")
    p.add_argument("--local-steps", type=int, default=20, help="optimizer steps per site and round (20)")
    p.add_argument("--lr", type=float, default=2e-3, help="local learning rate, cosine-decayed over rounds (2e-3)")
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx proximal weight (0.01)")
    p.add_argument("--channels", default="T1,T2,FLAIR", help="the model's channels, in order (T1,T2,FLAIR)")
    p.add_argument("--labels", default="lesion core,edema", help="the model's labels, in order")
    p.add_argument("--patch", type=int, default=48, help="cubic training patch (48)")
    p.add_argument("--spacing", type=float, default=3.0, help="model grid in mm (3)")
    p.add_argument("--filters", default="16,32,64,128", help="DynUNet widths (16,32,64,128)")
    p.add_argument("--batch", type=int, default=2, help="patches per local step (2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-sites", type=int, default=0, help="sites a round needs (0: all)")
    p.add_argument("--round-timeout", type=float, default=900.0, help="seconds to wait for the sites' replies (900)")
    p.add_argument("--name", default="uharmony-federated", help="bundle name prefix (uharmony-federated)")


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
        batch=args.batch,
        patch=args.patch,
        spacing=args.spacing,
        filters=args.filters,
        seed=args.seed,
        min_sites=args.min_sites,
        round_timeout=args.round_timeout,
        name=args.name,
    )


def add_federated_parsers(verbs: Any) -> None:
    """`uharmony federated server|site|simulate|certs`."""
    from UHarmonyLib.cli import _add_progress  # the one --progress option of every verb

    fed = verbs.add_parser("federated", help="train across hospitals that cannot pool images (Flower)")
    sub = fed.add_subparsers(dest="action", required=True)

    server = sub.add_parser("server", help="run the SuperLink and the federation's run; stops when it finishes")
    add_contract_options(server)
    server.add_argument("--out", required=True, type=Path, metavar="SERVER_DIR", help="server.json, logs, backbone")
    server.add_argument("--address", default="127.0.0.1:9091", help="HOST:PORT the SuperLink listens on")
    server.add_argument("--tls", type=Path, metavar="CERTS", help="folder from `federated certs` (ca.crt, server.*)")
    server.add_argument("--site-key", type=Path, action="append", default=[], metavar="PUB",
                        help="admit only SuperNodes holding these OpenSSH EC public keys (repeatable)")  # fmt: skip
    server.add_argument("--dp-noise", type=float, default=0.0, help="Gaussian noise multiplier (0: no DP)")
    server.add_argument("--dp-clip", type=float, default=1.0, help="clipping norm of each site's update (1.0)")

    site = sub.add_parser("site", help="run one hospital's SuperNode (until stopped)")
    site.add_argument("--site", required=True, help="this site's name, as the server lists it")
    site.add_argument("--data", required=True, type=Path, metavar="LOCAL_DATASET_JSON", help="the site's cases")
    site.add_argument("--state", required=True, type=Path, metavar="SITE_DIR", help="rows, logs and bundles")
    site.add_argument("--superlink", default="127.0.0.1:9091", help="the server's HOST:PORT")
    site.add_argument("--root-certificates", type=Path, metavar="CA", help="CA of the SuperLink's certificate (TLS)")
    site.add_argument("--auth-key", type=Path, metavar="KEY", help="this site's private key (authentication)")
    site.add_argument("--private", action="store_true", help="never publish this site's trained rows")

    sim = sub.add_parser("simulate", help="every site in Flower's simulation on this machine")
    add_contract_options(sim)
    sim.add_argument("--data", required=True, type=Path, action="append", metavar="DATASET_JSON",
                     help="one dataset for all sites, or one per site in --sites order")  # fmt: skip
    sim.add_argument("--out", required=True, type=Path, metavar="DIR", help="server/ and sites/<name>/")
    _add_progress(sim)

    certs = sub.add_parser("certs", help="a trial CA, SuperLink certificate and site keys")
    certs.add_argument("--out", required=True, type=Path, metavar="CERTS")
    certs.add_argument("--host", action="append", default=[], help="SuperLink host name or IP (127.0.0.1)")
    certs.add_argument("--site", action="append", default=[], help="write an authentication key pair for this site")


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


def run_site(args: argparse.Namespace) -> int:
    """The SuperNode in the foreground; Ctrl-C (or the service manager) stops it."""
    from UHarmonyLib.errors import InputError
    from UHarmonyLib.federated.deploy import flower_env, site_command

    if not args.data.exists():
        raise InputError(f"{args.data}: dataset not found")
    for path in (args.root_certificates, args.auth_key):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: file not found")
    command = site_command(
        args.superlink, args.site, args.data, args.state, args.root_certificates, args.auth_key, not args.private
    )
    args.state.mkdir(parents=True, exist_ok=True)
    return subprocess.call(command, env=flower_env(args.state.resolve() / "flwr-home"))


def _summary(record: dict[str, Any]) -> str:
    rounds = record.get("rounds", [])
    per_round = sum(r["seconds"] for r in rounds) / max(1, len(rounds))
    dice = ", ".join(f"{k} {v:.3f}" for k, v in record.get("dice_whole_lesion", {}).items())
    return f"{len(rounds)} round(s), {per_round:.1f} s per round; bundles written by each site; validation Dice: {dice}"


def run_simulate(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from UHarmonyLib.federated.simulate import simulate

    record = simulate(contract_from_args(args), args.data, args.out)
    if isinstance(reporter, JsonReporter):
        reporter.result(record)
    else:
        print(_summary(record))
    return record


def run_certs(args: argparse.Namespace) -> None:
    from UHarmonyLib.federated.certs import make_site_keys, make_tls

    files = {**make_tls(args.out, args.host or ["127.0.0.1"]), **make_site_keys(args.out / "sites", args.site)}
    print("\n".join(f"{k}: {v}" for k, v in files.items()))
