"""The Flower ClientApp: one hospital's node answering the server's messages.

Messages: `train` (a round of local steps on the received backbone; replies the shared
tensors only), `evaluate` (with `--eval-every`: the round's model on the site's validation
cases; replies a Dice and a case count), `query.publish` (the site's gate-bank summary vectors and, if the site
publishes, its trained rows) and `query.finish` (the final backbone and the published
rows in, the site's own bundle out). A deployed node reads its settings from its
SuperNode's node config (`site`, `data`, `state`, optional `publish`) and the contract
from the run config; a simulation passes its own settings function instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from UHarmonyLib.federated.contract import Federation
from UHarmonyLib.federated.site import SiteNode
from UHarmonyLib.federated.wire import bank_record, published_rows, read_bank, record_number

NodeSettings = Callable[[Context], tuple[Federation, str, Path, Path, bool]]


def deployed_settings(context: Context) -> tuple[Federation, str, Path, Path, bool]:
    """(contract, site, dataset, state folder, publish) of a SuperNode's ClientApp."""
    cfg = context.node_config
    missing = [k for k in ("site", "data", "state") if k not in cfg]
    if missing:
        raise ValueError(f"node config lacks {', '.join(missing)}: start the node with `uharmony federated site`")
    publish = str(cfg.get("publish", "true")).lower() not in ("false", "0", "no")
    contract = Federation.from_run_config(dict(context.run_config))
    return contract, str(cfg["site"]), Path(str(cfg["data"])), Path(str(cfg["state"])), publish


def make_client_app(settings: NodeSettings) -> ClientApp:
    """The site's message handlers, with `settings` telling each process which site it is."""
    client = ClientApp()

    def node(context: Context) -> tuple[SiteNode, bool]:
        contract, site, data, state, publishing = settings(context)
        return SiteNode(contract, data, site, state), publishing

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        site, _ = node(context)
        config = msg.content.config_records["config"]
        shared = {k: v.float() for k, v in msg.content.array_records["arrays"].to_torch_state_dict().items()}
        server_round = int(record_number(config, "server-round"))
        out, figures = site.train_round(shared, server_round, record_number(config, "proximal-mu", 0.0))
        content = RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord(dict(figures))})
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """The round's model (received backbone, the site's own rows) on the site's validation cases."""
        site, _ = node(context)
        shared = {k: v.float() for k, v in msg.content.array_records["arrays"].to_torch_state_dict().items()}
        figures = site.evaluate_round(shared)
        content = RecordDict({"site": ConfigRecord({"name": site.site}), "metrics": MetricRecord(dict(figures))})
        return Message(content=content, reply_to=msg)

    @client.query("publish")
    def publish(msg: Message, context: Context) -> Message:
        """What the site lets the others use: summary vectors always, its rows only if it publishes."""
        site, publishing = node(context)
        content = RecordDict(
            {"site": ConfigRecord({"name": site.site, "publish": publishing}), "bank": bank_record(site.bank())}
        )
        if publishing:
            content["rows"] = ArrayRecord(site.published_rows())
        return Message(content=content, reply_to=msg)

    @client.query("finish")
    def finish(msg: Message, context: Context) -> Message:
        site, _ = node(context)
        shared = {k: v.float() for k, v in msg.content.array_records["arrays"].to_torch_state_dict().items()}
        rows = published_rows(msg.content)
        rows.pop(site.site, None)  # its own rows come from its own disk
        path, figures = site.write_bundle(shared, rows, read_bank(msg.content.array_records["bank"]))
        dice = figures.get("mean_dice_whole_lesion")
        metrics = MetricRecord({"dice-whole-lesion": -1.0 if dice is None else float(dice)})
        content = RecordDict({"bundle": ConfigRecord({"site": site.site, "path": str(path)}), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    return client


app = make_client_app(deployed_settings)
