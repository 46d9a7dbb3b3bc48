#!/usr/bin/env python3
"""Checks the plain-PyTorch reference (guidiff_reference.py) against `guidiff sample`.

For each case, both are run with the SAME `guidiff sample` flags on the same starting noise
x_T (written here with numpy), the reference twice: in float32 as guidiff, and in float64 as
a yardstick whose own rounding is negligible. The reference reproduces guidiff's noise
streams, so the stochastic samplers (DDPM, DDIM with eta > 0) are compared element by element
too.

The bound comes from the arithmetic, not from one CPU: float32 rounding, amplified by the
sampler (DDIM multiplies eps by sqrt(1/abar - 1), about 26 at t = 800, CFG by 1 + w), is what
separates any float32 implementation from the float64 run, and the reference's own float32
run measures it case by case, on this CPU's kernels: e32 = max |reference32 - reference64|.
guidiff agrees "to float32 rounding" when its distance from the float64 run is at most
RATIO x e32 (two float32 implementations that sum in different orders have errors of the same
size; RATIO = 4 covers the spread of a maximum over a few thousand elements), or a few ulps
of the samples where e32 is 0. A wrong formula moves samples by 1e-2 or more, far above it.

    /usr/bin/python3 bench/reference/check_against_guidiff.py [--guidiff build/guidiff]
        [--num-samples 4] [--steps 5] [--threads 1] [--no-toy] [--ratio 4]

The synthetic cases build small networks with random weights from configs that use the
architecture options the committed models do not (adaptive pooling, new-order multi-head
attention, residual resampling blocks, learned sigma), write them as guidiff checkpoints,
and sample them with both. The toy cases first train a small conditional MLP denoiser and MLP classifier on the 2-D
mixture (`guidiff train`, a few seconds) in a temporary directory.
Exit status 0 when every case agrees within its bound, 1 otherwise.
"""

import argparse
import json
import os
import struct
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import guidiff_reference as reference  # noqa: E402

UNET = os.path.join(ROOT, "models", "fashion-mnist", "cfg_unet")
CLASSIFIER = os.path.join(ROOT, "models", "fashion-mnist", "classifier")


def image_cases(steps, classes):
    """(name, flags) for the Fashion-MNIST UNet and classifier."""
    s = ["--model", UNET, "--steps", str(steps)]
    guide = ["--unconditional", "--classifier", CLASSIFIER, "--classifier-scale", "1",
             "--class", classes]
    return [
        ("ddim conditional (w=0)", s + ["--class", classes]),
        ("ddim unconditional (null class)", s),
        ("ddim cfg w=3", s + ["--class", classes, "--cfg-scale", "3"]),
        ("ddim classifier s=1", s + guide),
        ("ddim cfg w=3 + classifier s=1", s + ["--classifier", CLASSIFIER, "--classifier-scale",
                                                "1", "--class", classes, "--cfg-scale", "3"]),
        ("ddim eta=1 conditional", s + ["--class", classes, "--eta", "1"]),
        ("ddim x_T from --seed 3", s + ["--class", classes, "--seed", "3", "NO_NOISE"]),
        ("ddim --respacing 2,3", ["--model", UNET, "--respacing", "2,3", "--class", classes]),
        ("ddim cosine schedule", s + ["--class", classes, "--schedule", "cosine"]),
        ("ddpm conditional", s[:2] + ["--sampler", "ddpm"] + s[2:] + ["--class", classes]),
        ("ddpm cfg w=3", s[:2] + ["--sampler", "ddpm"] + s[2:] + ["--class", classes,
                                                                  "--cfg-scale", "3"]),
        ("ddpm classifier s=1", s[:2] + ["--sampler", "ddpm"] + s[2:] + guide),
    ]


def toy_cases(model_dir, classifier_dir, classes):
    """(name, flags) for the tiny MLP denoiser / classifier on the 2-D mixture."""
    s = ["--model", model_dir, "--steps", "20"]
    guide = ["--unconditional", "--classifier", classifier_dir, "--classifier-scale", "2",
             "--class", classes]
    return [
        ("toy ddim conditional", s + ["--class", classes]),
        ("toy ddim cfg w=3", s + ["--class", classes, "--cfg-scale", "3"]),
        ("toy ddim classifier s=2", s + guide),
        ("toy ddpm cfg w=3", ["--sampler", "ddpm"] + s + ["--class", classes, "--cfg-scale", "3"]),
        ("toy ddpm classifier s=2", ["--sampler", "ddpm"] + s + guide),
    ]


# Small networks with the architecture options the committed models do not use: new-order
# multi-head attention, residual up/down-sampling blocks, the additive (not scale-shift)
# embedding, average-pool / nearest resampling, learned-sigma output channels and the
# classifier's adaptive pooling.
_SYNTHETIC_BACKBONE = {
    "image_size": 28, "in_channels": 1, "model_channels": 16, "channel_mult": [1, 2, 2],
    "num_res_blocks": 1, "attention_resolutions": [14, 7], "dropout": 0.0,
    "conv_resample": False, "num_heads": 2, "num_head_channels": -1,
    "use_scale_shift_norm": False, "resblock_updown": True, "use_new_attention_order": True,
    "norm_groups": 8, "time_input": "discrete_timestep",
}
SYNTHETIC_UNET = dict(_SYNTHETIC_BACKBONE, kind="unet", num_classes=10, learn_sigma=True)
# guidiff's DDPM gives a learn_sigma model the learned-range variance, which the reference
# does not implement: DDPM gets the same UNet without the variance channels.
SYNTHETIC_UNET_FIXED = dict(SYNTHETIC_UNET, learn_sigma=False)
SYNTHETIC_CLASSIFIER = dict(_SYNTHETIC_BACKBONE, kind="encoder_unet", num_classes=10,
                            pool="adaptive", conv_resample=True, resblock_updown=False,
                            use_new_attention_order=False, num_head_channels=16)


def save_safetensors(path, tensors):
    """A minimal safetensors writer (F32 only): header length, JSON header, raw data."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def write_synthetic_model(config, prefix, seed):
    """A network of `config` with random weights (every tensor perturbed, so the layers
    that guided-diffusion zero-initialises and the GroupNorm affines matter too), saved as
    a guidiff checkpoint PREFIX.{safetensors,json}. Returns the prefix.

    The perturbation is kept small: a random UNet with large outputs turns float32
    rounding alone into large differences (DDIM multiplies eps by sqrt(1/abar - 1), about 26
    at t = 800, and CFG by 1 + w), which would hide a small formula error."""
    torch.manual_seed(seed)
    network = reference.build_network(config)
    with torch.no_grad():
        for tensor in network.state_dict().values():
            tensor.add_(0.03 * torch.randn_like(tensor))
    save_safetensors(prefix + ".safetensors", network.state_dict())
    with open(prefix + ".json", "w") as f:
        json.dump(config, f, indent=2)
    return prefix


def synthetic_cases(model, model_fixed, classifier, steps, classes):
    s = ["--model", model, "--steps", str(steps)]
    return [
        ("synthetic unet ddim cfg w=2", s + ["--class", classes, "--cfg-scale", "2"]),
        ("synthetic adaptive classifier s=3", s + ["--unconditional", "--classifier", classifier,
                                                   "--classifier-scale", "3", "--class", classes]),
        ("synthetic unet ddpm cfg w=2", ["--sampler", "ddpm", "--model", model_fixed,
                                         "--steps", str(steps), "--class", classes,
                                         "--cfg-scale", "2"]),
    ]


def run_guidiff(guidiff, threads, flags, out):
    command = ["nice", "-n", "10", guidiff, "--threads", str(threads), "sample", *flags,
               "--out", out]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")


def train_toy(guidiff, threads, work):
    """A conditional MLP denoiser (label dropout, so it has a null class) and an MLP
    classifier, trained just enough (about 4 s on one core) that the samples land on the
    mixture and depend on the class. A short EMA (0.9) matters: with the default 0.9999 the
    sampling weights would still be the initial ones, whose zero output layer predicts
    eps = 0 whatever the class, and the comparison would test nothing."""
    model_dir, classifier_dir = os.path.join(work, "mlp_diffusion"), os.path.join(work, "mlp_cls")
    common = ["--data", "mixture", "--lr", "1e-3", "--ema-rate", "0.9", "--log-every", "0",
              "--save-every", "0"]
    for command in (["train", "diffusion", *common, "--steps", "400", "--conditional",
                     "--p-uncond", "0.2", "--out-dir", model_dir],
                    ["train", "classifier", *common, "--steps", "200",
                     "--out-dir", classifier_dir]):
        result = subprocess.run(["nice", "-n", "10", guidiff, "--threads", str(threads), *command],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"guidiff {' '.join(command)} failed:\n{result.stderr}")
    return model_dir, classifier_dir


def compare(name, flags, noise_file, work, args):
    """Runs one case through guidiff and the reference (float32 and float64). Returns
    (max |guidiff - reference64|, max |reference32 - reference64|, max |guidiff - reference32|,
    max |guidiff|)."""
    flags = list(flags)
    if "NO_NOISE" in flags:
        flags.remove("NO_NOISE")
        flags += ["--num-samples", str(args.num_samples)]
    else:
        flags += ["--noise", noise_file, "--num-samples", str(args.num_samples)]
    guidiff_out = os.path.join(work, "guidiff.npy")
    reference_out = os.path.join(work, "reference.npy")
    reference64_out = os.path.join(work, "reference64.npy")
    run_guidiff(args.guidiff, args.threads, flags, guidiff_out)
    reference.main(flags + ["--out", reference_out, "--threads", str(args.threads)])
    reference.main(flags + ["--out", reference64_out, "--threads", str(args.threads), "--float64"])
    ours = np.load(guidiff_out).astype(np.float64)
    theirs, exact = np.load(reference_out).astype(np.float64), np.load(reference64_out)
    if ours.shape != theirs.shape or ours.shape != exact.shape:
        raise RuntimeError(f"{name}: shapes differ, guidiff {ours.shape}, "
                           f"reference {theirs.shape}, float64 reference {exact.shape}")
    return (float(np.abs(ours - exact).max()), float(np.abs(theirs - exact).max()),
            float(np.abs(ours - theirs).max()), float(np.abs(ours).max()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guidiff", default=os.path.join(ROOT, "build", "guidiff"))
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="steps of the image cases")
    parser.add_argument("--threads", type=int, default=1, help="for guidiff and the reference")
    parser.add_argument("--ratio", type=float, default=4.0,
                        help="guidiff's float32 error may be this many times the reference's")
    parser.add_argument("--no-toy", action="store_true", help="skip the 2-D MLP cases")
    parser.add_argument("--seed", type=int, default=0, help="numpy seed of x_T")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="guidiff_check_")
    try:
        rng = np.random.default_rng(args.seed)
        classes = ",".join(str(k % 10) for k in range(args.num_samples))
        groups = []
        image_noise = os.path.join(work, "x_T_images.npy")
        np.save(image_noise, rng.standard_normal((args.num_samples, 1, 28, 28)).astype(np.float32))
        groups.append((image_noise, image_cases(args.steps, classes)))
        groups.append((image_noise, synthetic_cases(
            write_synthetic_model(SYNTHETIC_UNET, os.path.join(work, "synthetic_unet"), 1),
            write_synthetic_model(SYNTHETIC_UNET_FIXED, os.path.join(work, "synthetic_fixed"), 3),
            write_synthetic_model(SYNTHETIC_CLASSIFIER, os.path.join(work, "synthetic_cls"), 2),
            args.steps, classes)))
        if not args.no_toy:
            model_dir, classifier_dir = train_toy(args.guidiff, args.threads, work)
            toy_noise = os.path.join(work, "x_T_toy.npy")
            np.save(toy_noise, rng.standard_normal((args.num_samples, 2)).astype(np.float32))
            toy_classes = ",".join(str(k % 4) for k in range(args.num_samples))
            groups.append((toy_noise, toy_cases(model_dir, classifier_dir, toy_classes)))

        print("e64: guidiff's max |difference| from the float64 reference; e32: the float32 "
              "reference's; bound: max(ratio x e32, 16 ulps of max |x|)")
        print(f"{'case':36s} {'e64':>10s} {'e32':>10s} {'bound':>10s} {'vs ref32':>10s} "
              f"{'max |x|':>8s}  result")
        failures = 0
        unit_roundoff = 2.0 ** -24
        for noise_file, cases in groups:
            for name, flags in cases:
                error, reference_error, versus_reference, scale = compare(
                    name, flags, noise_file, work, args)
                bound = max(args.ratio * reference_error, 16 * unit_roundoff * max(scale, 1.0))
                ok = error <= bound
                failures += not ok
                print(f"{name:36s} {error:10.3e} {reference_error:10.3e} {bound:10.3e} "
                      f"{versus_reference:10.3e} {scale:8.3f}  {'ok' if ok else 'FAIL'}", flush=True)
        print(f"{failures} of {sum(len(c) for _, c in groups)} cases beyond their float32 "
              f"rounding bound (ratio {args.ratio:g})")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
