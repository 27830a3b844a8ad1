"""Train the small starter model shipped in Resources/Models.

A FLAIR-only model small and fast enough for the test suite and the inference benchmark
(the default model, scripts/train_default_model.sh, takes 45 min): three synthetic
sites that differ in appearance, a U-Harmony DynUNet trained for a few minutes on the
CPU with the site known (one-hot site weights) while the domain gate learns to name
the site, so that at inference the gate drives the harmony layers.

    .venv/bin/python scripts/train_starter_model.py [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from UHarmonyLib.data.synth import Case, SiteSpec, make_case
from UHarmonyLib.data.template import MNI_NOTICE, load_template
from UHarmonyLib.inference.engine import segment_volumes
from UHarmonyLib.inference.preprocessing import ModelSpace, normalize, stack_channels
from UHarmonyLib.model.card import DEFAULT_INFERENCE
from UHarmonyLib.model.weights import Bundle, make_card, save_bundle
from UHarmonyLib.nn.config import NetworkConfig
from UHarmonyLib.nn.network import UHarmonyNet
from UHarmonyLib.nn.site_weights import one_hot_weights
from UHarmonyLib.resources import BUNDLED_MODELS, DEFAULT_MODEL_NAME

SITES = [
    SiteSpec("clinic-a", noise=0.02),
    SiteSpec("clinic-b", gamma=0.6, bias=0.3, noise=0.05, scale=300.0, offset=20.0),
    SiteSpec("clinic-c", gamma=1.4, blur=2.0, noise=0.01, scale=50.0),
]
LABELS = [
    {"value": 1, "name": "lesion core", "color": "#d62728"},
    {"value": 2, "name": "edema", "color": "#ffbf00"},
]
PREPROCESSING = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": {"method": "zscore", "nonzero": True}}
PATCH = 64


def prepare(case: Case, space_cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The same model-space arrays the inference engine builds."""
    image = case.images["FLAIR"]
    space = ModelSpace.for_image(image, space_cfg)
    x = normalize(stack_channels(space, [image]), space_cfg["intensity"])
    y = torch.from_numpy(space.to_model(case.label)).round().long()
    return x, y


def crop(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A PATCH^3 window, centred on lesion half of the time."""
    shape = np.array(y.shape)
    if rng.random() < 0.5 and (y > 0).any():
        fg = torch.nonzero(y > 0)
        centre = fg[rng.integers(len(fg))].numpy()
    else:
        centre = rng.integers(0, shape)
    start = np.clip(centre - PATCH // 2, 0, np.maximum(shape - PATCH, 0))
    sl = tuple(slice(int(s), int(s) + PATCH) for s in start)
    return x[(slice(None), *sl)], y[sl]


def generate(per_site: int, rng: np.random.Generator) -> list[tuple[int, Case]]:
    template = load_template(2.0)
    return [(i, make_case(template, s, rng)) for i, s in enumerate(SITES) for _ in range(per_site)]


def evaluate(bundle: Bundle, cases: list[tuple[int, Case]]) -> dict:
    """Whole-lesion Dice per site and gate accuracy on held-out cases, through the real engine."""
    dice = DiceMetric(include_background=False)
    per_site: dict[str, list[float]] = {}
    correct = 0
    for site, case in cases:
        result = segment_volumes(bundle, [case.images["FLAIR"]])
        correct += int(result.gate.chosen == SITES[site].name)
        pred = torch.from_numpy(sitk.GetArrayFromImage(result.labels) > 0).float()[None, None]
        truth = torch.from_numpy(sitk.GetArrayFromImage(case.label) > 0).float()[None, None]
        per_site.setdefault(SITES[site].name, []).append(float(dice(pred, truth).item()))
        dice.reset()
    return {
        "dice_whole_lesion": {k: round(float(np.mean(v)), 4) for k, v in per_site.items()},
        "gate_accuracy": round(correct / len(cases), 4),
        "held_out_cases": len(cases),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases-per-site", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="1 avoids thrashing when the CPU is shared")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    train = [(site, prepare(case, PREPROCESSING)) for site, case in generate(args.cases_per_site, rng)]
    held_out = generate(2, np.random.default_rng(args.seed + 1000))
    print(f"generated {len(train)} training and {len(held_out)} held-out cases in {time.time() - t0:.0f} s")

    cfg = NetworkConfig(in_channels=1, out_channels=3, num_sites=len(SITES), filters=(16, 32, 64, 128, 256))
    net = UHarmonyNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps)
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    gate_loss = torch.nn.CrossEntropyLoss()
    by_site = [[c for c in train if c[0] == i] for i in range(len(SITES))]
    scaler_patches = [crop(*by_site[i % len(SITES)][rng.integers(args.cases_per_site)][1], rng)[0] for i in range(90)]
    net.gate.fit_scaler(net.gate.features(torch.stack(scaler_patches)))
    t1 = time.time()
    net.train()
    for step in range(1, args.steps + 1):
        sites = rng.choice(len(SITES), size=2, replace=False)
        pairs = [crop(*by_site[s][rng.integers(len(by_site[s]))][1], rng) for s in sites]
        x = torch.stack([p[0] for p in pairs])
        y = torch.stack([p[1] for p in pairs])[:, None]
        w = torch.cat([one_hot_weights(int(s), len(SITES)) for s in sites])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, gate_logits = net(x, w)
        loss = seg_loss(logits.float(), y) + 0.5 * gate_loss(gate_logits.float(), torch.as_tensor(sites))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t1:.0f} s)", flush=True)
    train_seconds = time.time() - t1

    command = "python scripts/train_starter_model.py " + " ".join(sys.argv[1:])
    card = make_card(
        net,
        name="uharmony-starter",
        version=1,
        title="UHarmony starter model (3 synthetic sites, FLAIR)",
        description=(
            "Small U-Harmony DynUNet trained for minutes on synthetic FLAIR-like cases from three sites "
            "that differ in appearance; a stand-in until the full default model is trained. " + MNI_NOTICE
        ),
        channels=[{"name": "FLAIR", "modality": "MR"}],
        labels=LABELS,
        sites=[{"name": s.name, "cases": args.cases_per_site, "labels": ["lesion core", "edema"]} for s in SITES],
        preprocessing=PREPROCESSING,
        inference={**DEFAULT_INFERENCE, "patch_size": [PATCH] * 3, "batch_size": 2},
        provenance={"command": command, "seed": args.seed, "steps": args.steps, "train_seconds": round(train_seconds)},
    )
    net.eval()
    card["metrics"] = evaluate(Bundle(Path("(training)"), card, net), held_out)
    print(card["metrics"])
    target = BUNDLED_MODELS / DEFAULT_MODEL_NAME
    staging = BUNDLED_MODELS / f".{DEFAULT_MODEL_NAME}-new"
    shutil.rmtree(staging, ignore_errors=True)
    save_bundle(net, card, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)

    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
